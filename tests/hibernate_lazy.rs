//! Lazy restore with real CRIU and real cgroups (docs/design.md,
//! "Lazy restore"): the worker answers before its memory is all back, its
//! whole heap is right once the lazy-pages daemon is done, and a restore
//! whose lazy part fails, or whose image is damaged, leaves no worker
//! running: the gate is hibernated again with its image.
//!
//! The worker is tests/fixtures/heap-worker.py: MB megabytes of random
//! bytes, "ping" -> "pong", "sum" -> a CRC of the whole heap.

use gov_testkit as kit;
mod hibernation;

use std::io::Write;
use std::time::Duration;

use gov::criu::{self, Criu, ImageState};
use gov::hibernate::{self, Options};
use gov::reaper::Phase;
use hibernation::*;

/// A heap worker of `mb` MB under a keeper, suspended and hibernated.
/// Returns the host and the CRC of the heap it printed when ready.
fn hibernated_worker(criu: &Criu, gate: &Gate, mb: u64, extra: &[&str]) -> (Host, String) {
    let script = kit::fixture("heap-worker.py");
    let size = mb.to_string();
    let mut cmd = vec![python(), script.to_str().unwrap(), &size, "random"];
    cmd.extend_from_slice(extra);
    let host = Host::start(gate, &cmd);
    let ready = host.line(Duration::from_secs(120));
    let crc = ready
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("ready PID CRC, got {ready:?}"))
        .to_string();
    gate.gate.freeze(Duration::from_secs(5)).unwrap();
    hibernate::hibernate(
        criu,
        &gate.gate,
        &mut record(&gate.gate),
        k(host.pid()),
        &gate.images(),
        &Options::default(),
    )
    .unwrap_or_else(|e| panic!("hibernate: {e}"));
    assert!(matches!(phase(&gate.gate), Phase::Hibernated { .. }));
    (host, crc)
}

/// Wakes the gate with `opts`, calling `running` once the worker runs.
fn wake(
    criu: &Criu,
    gate: &Gate,
    keeper: u32,
    opts: &Options,
    running: impl FnOnce(&criu::RestoreReport, Option<&gov::lazy::LazyPages>),
) -> Result<criu::RestoreReport, hibernate::HibernateError> {
    hibernate::wake_then(
        criu,
        &gate.gate,
        &mut record(&gate.gate),
        k(keeper),
        &gate.images(),
        opts,
        running,
    )
}

fn ask(host: &mut Host, req: &str) -> String {
    let stdin = host.stdin.as_mut().unwrap();
    writeln!(stdin, "{req}").unwrap();
    stdin.flush().unwrap();
    host.line(Duration::from_secs(60))
}

fn lazy_or_skip(test: &str) -> Option<Criu> {
    let criu = kit::criu::criu_or_skip(test)?;
    if !criu.lazy_pages_supported() {
        assert!(
            std::env::var("GOV_REQUIRE_CRIU").as_deref() != Ok("1"),
            "{test}: lazy pages are required here (GOV_REQUIRE_CRIU=1)"
        );
        kit::skip(
            test,
            "criu check --feature uffd-noncoop: no userfaultfd for CRIU here",
        );
        return None;
    }
    Some(criu)
}

#[test]
fn a_lazy_restore_answers_first_and_then_completes() {
    let Some(criu) = lazy_or_skip("a_lazy_restore_answers_first_and_then_completes") else {
        return;
    };
    const MB: u64 = 512;
    let gate = Gate::new();
    let (mut host, crc) = hibernated_worker(&criu, &gate, MB, &[]);
    let keeper = host.pid();
    let mut at_pong = None;
    let report = wake(&criu, &gate, keeper, &Options::default(), |_, lazy| {
        let lazy = lazy.expect("a lazy restore where criu supports it");
        // The worker answers while the lazy-pages daemon still works.
        assert_eq!(ask(&mut host, "ping"), "pong");
        at_pong = Some((
            lazy.pid().is_some_and(gov::proc::is_alive),
            rss_kb(&gate.w),
            matches!(phase(&gate.gate), Phase::Restoring { .. }),
        ));
    })
    .unwrap_or_else(|e| panic!("wake: {e}"));
    let (daemon_alive, rss, restoring) = at_pong.expect("the worker ran");
    eprintln!(
        "lazy: restored in {:?}, memory back after {:?}; at the first reply the daemon was {}, RSS {rss} kB",
        report.elapsed,
        report.memory_back,
        if daemon_alive { "still at work" } else { "done" },
    );
    // Answered before all memory was back: the daemon was still copying,
    // or had not yet been reaped having copied the pages the worker touched.
    assert!(
        daemon_alive || rss < MB * 1024 * 9 / 10,
        "the first reply came only after all {MB} MB were back (RSS {rss} kB)"
    );
    assert!(restoring, "the gate says restoring while memory arrives");
    assert!(report.memory_back.is_some());
    // Then complete: the whole heap is right, the image gone, running.
    assert_eq!(ask(&mut host, "sum"), format!("sum {crc}"));
    assert!(rss_kb(&gate.w) >= MB * 1024 * 9 / 10);
    assert_eq!(criu::image_state(&gate.images()), ImageState::None);
    assert_eq!(phase(&gate.gate), Phase::Running);
    host.assert_running("after a lazy restore");
}

#[test]
fn a_lazy_restore_whose_daemon_dies_leaves_the_gate_hibernated() {
    let test = "a_lazy_restore_whose_daemon_dies_leaves_the_gate_hibernated";
    let Some(criu) = lazy_or_skip(test) else {
        return;
    };
    let gate = Gate::new();
    let (mut host, crc) = hibernated_worker(&criu, &gate, 256, &[]);
    let keeper = host.pid();
    let err = wake(&criu, &gate, keeper, &Options::default(), |_, lazy| {
        let pid = lazy.and_then(|l| l.pid()).expect("a lazy-pages daemon");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    })
    .expect_err("a restore whose pages never came back must fail");
    eprintln!("refused as expected: {err}");
    // Not running, not half there: the worker is gone, the image whole.
    assert!(!gate.w.read_cgroup_events().unwrap().populated);
    assert_eq!(criu::image_state(&gate.images()), ImageState::Complete);
    assert!(matches!(phase(&gate.gate), Phase::Hibernated { .. }));
    host.assert_running("after a failed lazy restore");
    // And the image still restores whole.
    wake(&criu, &gate, keeper, &Options::default(), |_, _| {})
        .unwrap_or_else(|e| panic!("second wake: {e}"));
    assert_eq!(ask(&mut host, "sum"), format!("sum {crc}"));
    assert_eq!(phase(&gate.gate), Phase::Running);
}

#[test]
fn a_truncated_image_is_not_restored_lazily_or_eagerly() {
    let test = "a_truncated_image_is_not_restored_lazily_or_eagerly";
    let Some(criu) = lazy_or_skip(test) else {
        return;
    };
    let gate = Gate::new();
    let (mut host, _) = hibernated_worker(&criu, &gate, 256, &[]);
    let keeper = host.pid();
    let dir = gate.images();
    let pages = criu::pages_files(&dir)
        .unwrap()
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a pages image");
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // gov's record of the sizes the dump wrote refuses it at once; without
    // that record (an image promoted after a daemon died) criu's restore
    // fails or hangs until its deadline, which kills what it restored.
    let check = |lazy: bool, timeout: Duration, host: &mut Host| {
        let opts = Options {
            lazy,
            restore_timeout: timeout,
            ..Options::default()
        };
        let err = wake(&criu, &gate, keeper, &opts, |_, _| {})
            .expect_err("half an image must not restore");
        eprintln!("lazy {lazy}: refused as expected: {err}");
        assert!(!gate.w.read_cgroup_events().unwrap().populated);
        assert_eq!(criu::image_state(&dir), ImageState::Complete);
        assert!(matches!(phase(&gate.gate), Phase::Hibernated { .. }));
        host.assert_running("after a failed restore");
        err
    };
    for lazy in [true, false] {
        let err = check(lazy, Duration::from_secs(120), &mut host);
        assert!(
            matches!(
                err,
                hibernate::HibernateError::Criu(criu::CriuError::Damaged { .. })
            ),
            "{err}"
        );
    }
    std::fs::remove_file(dir.join("gov-sizes")).unwrap();
    check(true, Duration::from_secs(20), &mut host);
    // A restore killed at its deadline leaves none of criu's cgroup mounts.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let here = dir.to_string_lossy().into_owned();
    assert!(
        !mounts.lines().any(|l| l.contains(&here)),
        "mounts left in {here}"
    );
    criu::remove_image(&dir).unwrap();
}

/// Numbers for docs/BENCHMARKS.md, not a check (run by hand), the process
/// limit lifted:
///   GOV_HIBERNATE_PROCS=100 cargo test --test hibernate_lazy -- --ignored --nocapture measure
/// The worker is heap-worker.py (64 MB) with that many forked Python
/// children, or with GOV_HIBERNATE_SLEEPS=1 a shell with that many `sleep`s.
#[test]
#[ignore]
fn measure_a_gate_of_many_processes() {
    let Some(criu) = lazy_or_skip("measure_a_gate_of_many_processes") else {
        return;
    };
    let procs = std::env::var("GOV_HIBERNATE_PROCS").unwrap_or_else(|_| "100".into());
    let sleeps = std::env::var_os("GOV_HIBERNATE_SLEEPS").is_some();
    let gate = Gate::new();
    let script = kit::fixture("heap-worker.py");
    let shell = format!(
        "i=0; while [ $i -lt {procs} ]; do sleep 1000 & i=$((i+1)); done; echo ready 0 0; \
         while read l; do echo pong; done"
    );
    let cmd: Vec<&str> = if sleeps {
        vec!["/bin/sh", "-c", &shell]
    } else {
        vec![python(), script.to_str().unwrap(), "64", "random", &procs]
    };
    let mut host = Host::start(&gate, &cmd);
    host.line(Duration::from_secs(600));
    let keeper = host.pid();
    let opts = |lazy| Options {
        lazy,
        max_processes: None,
        ..Options::default()
    };
    for lazy in [true, false, true, false] {
        gate.gate.freeze(Duration::from_secs(5)).unwrap();
        let r = hibernate::hibernate(
            &criu,
            &gate.gate,
            &mut record(&gate.gate),
            k(keeper),
            &gate.images(),
            &opts(lazy),
        )
        .unwrap_or_else(|e| panic!("hibernate: {e}"));
        eprintln!(
            "{procs} processes: dump {:?}, image {} bytes",
            r.elapsed, r.image_bytes
        );
        let t0 = std::time::Instant::now();
        let mut first = None;
        let r = wake(&criu, &gate, keeper, &opts(lazy), |_, _| {
            first = Some((ask(&mut host, "ping"), t0.elapsed()));
        })
        .unwrap_or_else(|e| panic!("wake: {e}"));
        eprintln!(
            "lazy {lazy}: restored {:?}, first reply {:?}, all back {:?}",
            r.elapsed,
            first.map(|f| f.1),
            r.memory_back,
        );
    }
}

/// A test runner that forked 2,000 workers would take 35-56 s to restore
/// here (measure_a_gate_of_many_processes): its dump is refused, the
/// reason shown, and it stays suspended as it was, every process intact.
#[test]
fn a_gate_of_2000_processes_is_refused_a_dump_and_stays_suspended() {
    let test = "a_gate_of_2000_processes_is_refused_a_dump_and_stays_suspended";
    let Some(criu) = kit::criu::criu_or_skip(test) else {
        return;
    };
    let gate = Gate::new();
    // sleep processes: ~2,000 x 0.1 MB, where Python children took 3.8 MB each.
    let mut host = Host::start(
        &gate,
        &[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 2000 ]; do sleep 1000 & i=$((i+1)); done; echo ready; wait",
        ],
    );
    assert_eq!(host.line(Duration::from_secs(120)), "ready");
    let pids = gate.w.read_procs().unwrap();
    assert!(pids.len() > 2000, "{} processes", pids.len());
    gate.gate.freeze(Duration::from_secs(5)).unwrap();
    let err = hibernate::hibernate(
        &criu,
        &gate.gate,
        &mut record(&gate.gate),
        k(host.pid()),
        &gate.images(),
        &Options::default(),
    )
    .expect_err("2,000 processes cannot be back within 2 s");
    let reason = err.reason();
    assert!(
        matches!(err, hibernate::HibernateError::TooManyProcesses { count, max }
            if count == pids.len() && max == hibernate::DEFAULT_MAX_PROCESSES),
        "{err}"
    );
    assert!(
        reason.contains(&format!("{} processes", pids.len())),
        "{reason}"
    );
    assert!(matches!(
        phase(&gate.gate),
        Phase::DumpRefused { reason: r, .. } if r == reason
    ));
    // Suspended as before: frozen, every process there, no image.
    assert!(gate.gate.read_cgroup_events().unwrap().frozen);
    assert_eq!(gate.w.read_procs().unwrap(), pids);
    assert_eq!(criu::image_state(&gate.images()), ImageState::None);
    host.assert_running("after a refused dump");
}

/// A daemon that died between starting `criu lazy-pages` and the restore
/// leaves that daemon waiting for a connection forever: the recovery ends
/// it (it serves nothing), and the gate is hibernated with its image.
#[test]
fn a_lazy_pages_daemon_left_without_its_restore_is_ended_by_the_recovery() {
    let test = "a_lazy_pages_daemon_left_without_its_restore_is_ended_by_the_recovery";
    let Some(criu) = lazy_or_skip(test) else {
        return;
    };
    let gate = Gate::new();
    let (mut host, crc) = hibernated_worker(&criu, &gate, 32, &[]);
    let keeper = host.pid();
    let dir = gate.images();
    // What the dead daemon had done: tagged restoring, thawed, started
    // criu lazy-pages on the image.
    let mut rec = record(&gate.gate);
    rec.enter(Phase::Restoring { since_ms: 1 }).unwrap();
    gate.gate.thaw(Duration::from_secs(5)).unwrap();
    let mut lazy = std::process::Command::new(criu.path())
        .args(["lazy-pages", "-D"])
        .arg(&dir)
        .args(["-o", "lazy-pages.log"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !hibernate::criu_running_for(&dir, criu.path()) {
        assert!(std::time::Instant::now() < deadline, "lazy-pages never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = hibernate::observe(&gate.gate, k(keeper), &dir, Some(&criu)).unwrap();
    assert!(!seen.criu_running, "{seen:?}");
    let status = lazy.wait().unwrap();
    assert!(!status.success(), "ended by the recovery: {status:?}");
    let r = hibernate::recover(&phase(&gate.gate), seen);
    assert_eq!(r, hibernate::Recovery::Hibernated);
    hibernate::apply(r, &gate.gate, &mut record(&gate.gate), k(keeper), &dir).unwrap();
    assert!(matches!(phase(&gate.gate), Phase::Hibernated { .. }));
    // And the image restores whole.
    wake(&criu, &gate, keeper, &Options::default(), |_, _| {})
        .unwrap_or_else(|e| panic!("wake: {e}"));
    assert_eq!(ask(&mut host, "sum"), format!("sum {crc}"));
}
