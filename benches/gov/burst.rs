//! 5. Bursts: N `gov spawn`, and N `gov touch` of one gate, at once.
//!
//! One ordinary user starts them all at the same moment, as a host that
//! fans out does. Each of the N processes is a copy of the bench run as a helper under uid
//! 65534 (nobody). The helpers start one by one, say they are ready, and
//! block on a pipe; closing the pipe's write end releases all of them at
//! once. Each then runs its command (fork+exec+wait) and appends one line
//! to a shared results file: its start and end on CLOCK_MONOTONIC, exit
//! status and first line of stderr. As nobody, `gov spawn` has no direct
//! mode to fall back to: every success went through the daemon.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gov::gate::{Tags, Tree};

use crate::util::*;

/// argv[1] of the bench binary run as a burst helper; argv[2..] is the
/// command it runs once released.
pub const HELPER: &str = "__gov_bench_burst";

const NOBODY: u32 = 65534;
const BARRIER_FD: RawFd = 3;
const READY_FD: RawFd = 4;
const RESULTS_FD: RawFd = 5;

fn mono_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The helper: ready, wait for the release, run argv, report one line.
pub fn helper(argv: &[String]) {
    // SAFETY: fds 3-5 were set up by the bench (dup2 before exec); plain
    // reads and writes on them.
    unsafe {
        libc::write(READY_FD, b"r".as_ptr().cast(), 1);
        libc::close(READY_FD);
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(BARRIER_FD, b.as_mut_ptr().cast(), 1);
            if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        libc::close(BARRIER_FD);
    }
    let t0 = mono_ns();
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let t1 = mono_ns();
    let (code, err) = match out {
        Ok(o) => (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
        Err(e) => (-2, e.to_string()),
    };
    let mut line = format!("{t0} {t1} {code} {}", err.replace('\n', " "));
    line.truncate(1000);
    line.push('\n');
    // One write of < PIPE_BUF to an O_APPEND file: lines never interleave.
    // SAFETY: writing a buffer we own.
    unsafe { libc::write(RESULTS_FD, line.as_ptr().cast(), line.len()) };
}

struct Outcome {
    starts_ns: Vec<i64>,
    ends_ns: Vec<i64>,
    failures: Vec<(i32, String)>,
    released_ns: i64,
    lines: usize,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid array for two fds.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // Above fd 10, so the helpers' dup2 onto 3-5 never clobbers a source.
    let high = |fd: RawFd| {
        // SAFETY: fd is ours; F_DUPFD_CLOEXEC returns a new one we own.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(h >= 10);
        unsafe { libc::close(fd) };
        // SAFETY: h is a fresh fd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(h) }
    };
    (high(fds[0]), high(fds[1]))
}

/// N helpers as nobody, released at once, each running `argv` with `env`.
fn burst(n: usize, dir: &Path, argv: &[String], env: &[(&str, &Path)]) -> Outcome {
    check_stop();
    let (barrier_r, barrier_w) = pipe();
    let (ready_r, ready_w) = pipe();
    let results_path = dir.join(format!("results-{}", mono_ns()));
    let results = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .expect("results file");
    // SAFETY: results' fd is valid for the duration of the spawns.
    let results_fd = unsafe { libc::fcntl(results.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    // SAFETY: a fresh fd we own.
    let results_fd = unsafe { OwnedFd::from_raw_fd(results_fd) };
    drop(results);
    let me = std::env::current_exe().expect("the bench's path");
    let (br, rw, res) = (
        barrier_r.as_raw_fd(),
        ready_w.as_raw_fd(),
        results_fd.as_raw_fd(),
    );
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Command::new(&me);
        c.arg(HELPER)
            .args(argv)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .uid(NOBODY)
            .gid(NOBODY);
        for (k, v) in env {
            c.env(k, v);
        }
        // SAFETY: dup2 is async-signal-safe; the fds stay open in the
        // parent until every helper is spawned.
        unsafe {
            c.pre_exec(move || {
                for (from, to) in [(br, BARRIER_FD), (rw, READY_FD), (res, RESULTS_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        children.push(c.spawn().expect("starting a burst helper"));
    }
    drop(ready_w);
    drop(barrier_r);
    drop(results_fd);
    // Every helper has said it is ready (or died: then EOF comes early).
    let mut ready = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while ready < n && Instant::now() < deadline {
        // SAFETY: reading into a buffer we own.
        let got = unsafe { libc::read(ready_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            break;
        }
        ready += got as usize;
    }
    assert_eq!(ready, n, "only {ready} of {n} burst helpers got ready");
    let released_ns = mono_ns();
    drop(barrier_w);
    for mut c in children {
        let _ = c.wait();
    }
    let text = fs::read_to_string(&results_path).unwrap_or_default();
    let _ = fs::remove_file(&results_path);
    let mut o = Outcome {
        starts_ns: Vec::new(),
        ends_ns: Vec::new(),
        failures: Vec::new(),
        released_ns,
        lines: 0,
    };
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(t0), Some(t1), Some(code)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        o.lines += 1;
        o.starts_ns.push(t0.parse().unwrap_or(0));
        o.ends_ns.push(t1.parse().unwrap_or(0));
        let code: i32 = code.parse().unwrap_or(-3);
        if code != 0 {
            o.failures.push((code, f.next().unwrap_or("").to_string()));
        }
    }
    o
}

fn row(t: &mut Table, what: &str, n: usize, o: &Outcome, daemon_cpu_ms: Option<f64>) {
    let per: Vec<f64> = o
        .starts_ns
        .iter()
        .zip(&o.ends_ns)
        .map(|(a, b)| (b - a) as f64 / 1e3)
        .collect();
    let per = Stats::new(per);
    let last_start = o.starts_ns.iter().max().copied().unwrap_or(0) - o.released_ns;
    let all_done = o.ends_ns.iter().max().copied().unwrap_or(0) - o.released_ns;
    let busy = o
        .failures
        .iter()
        .filter(|(_, e)| e.contains("busy") || e.contains("connection limit"))
        .count();
    t.row(vec![
        what.to_string(),
        n.to_string(),
        (o.lines - o.failures.len()).to_string(),
        busy.to_string(),
        (o.failures.len() - busy + (n - o.lines)).to_string(),
        ms(last_start as f64 / 1e3),
        ms(all_done as f64 / 1e3),
        ms(per.p(50.0)),
        ms(per.p(99.0)),
        ms(per.max()),
        daemon_cpu_ms.map_or("-".to_string(), f1),
    ]);
    for (code, e) in o.failures.iter().take(3) {
        println!("- {what}: exit {code}: {e}");
    }
}

pub fn run(root: &BenchRoot, _tmp: &Path) {
    let n = env_usize("GOV_BENCH_BURST_N", 1000);
    let rounds = env_usize("GOV_BENCH_BURST_ROUNDS", if quick() { 1 } else { 2 });
    println!("## 5. Bursts: {n} concurrent clients of one user (nobody), released at once\n");

    // A directory nobody can use: the socket, the project, the helpers' cwd.
    let dir = PathBuf::from(format!("/tmp/gov-bench-burst-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("burst dir");
    register_dir(&dir);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let gov = dir.join("gov");
    fs::copy(gov_bin(), &gov).expect("copying gov where nobody can run it");
    let bench_copy = std::env::current_exe().expect("the bench");
    assert!(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "test",
                "-x"
            ])
            .arg(&bench_copy)
            .status()
            .is_ok_and(|s| s.success()),
        "nobody cannot run {}; put CARGO_TARGET_DIR where others can read",
        bench_copy.display()
    );

    let daemon_root = root.sub("burst");
    let socket = dir.join("burst.sock");
    let config = dir.join("burst.toml");
    write_config(&config, &socket, "5s", "");

    // The touched gate: nobody's, owned by the bench (alive throughout).
    let tree = Tree::at(root.mount.clone(), &daemon_root.display().to_string()).unwrap();
    let me = std::process::id();
    let tags = Tags {
        project: dir.display().to_string(),
        session: "burst-touch".to_string(),
        owner_uid: NOBODY,
        owner_pid: Some(me),
        owner_start: gov::proc::start_time(me),
        created_ms: gov::gate::now_ms(),
        ..Default::default()
    };
    let gate = tree.create_gate(&tags).expect("creating the touched gate");
    let gate_pids = fork_into(gate.cgroup.path(), 1);
    let _ = gate.cgroup.write_tag("main_pid", &gate_pids[0].to_string());

    let daemon = Daemon::start(
        &daemon_root,
        &config,
        &socket,
        &dir.join("burst-daemon.log"),
        None,
    );
    wait_known(&mut daemon.conn(), &gate.id, Duration::from_secs(15));

    let g = gov.display().to_string();
    let project = dir.display().to_string();
    let spawn_argv: Vec<String> = [
        g.as_str(),
        "spawn",
        "--project",
        &project,
        "--no-owner",
        "--",
        "/bin/true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let touch_argv: Vec<String> = vec![g.clone(), "touch".into(), gate.id.clone()];
    let true_argv: Vec<String> = vec!["/bin/true".into()];
    let env = [("GOV_SOCKET", socket.as_path())];

    let mut t = Table::new(&[
        "burst",
        "clients",
        "ok",
        "refused (`busy`)",
        "other failures",
        "last client started ms",
        "all done ms",
        "per client p50 ms",
        "p99 ms",
        "max ms",
        "daemon CPU ms",
    ]);
    for round in 1..=rounds {
        let o = burst(n, &dir, &true_argv, &env);
        row(
            &mut t,
            &format!("`/bin/true` (baseline), round {round}"),
            n,
            &o,
            None,
        );
        let cpu0 = daemon.usage_usec();
        let o = burst(n, &dir, &spawn_argv, &env);
        let cpu = (daemon.usage_usec() - cpu0) as f64 / 1e3;
        row(
            &mut t,
            &format!("`gov spawn --no-owner -- /bin/true`, round {round}"),
            n,
            &o,
            Some(cpu),
        );
        // The spawned gates' exits are the daemon's to clean up; let it
        // before the next burst.
        let waited = Instant::now();
        let mut c = daemon.conn();
        while daemon.running_gates(&mut c) > 1 && waited.elapsed() < Duration::from_secs(60) {
            nap(Duration::from_millis(20));
        }
        let cpu0 = daemon.usage_usec();
        let o = burst(n, &dir, &touch_argv, &env);
        let cpu = (daemon.usage_usec() - cpu0) as f64 / 1e3;
        row(
            &mut t,
            &format!("`gov touch GATE` (one gate), round {round}"),
            n,
            &o,
            Some(cpu),
        );
    }
    t.print();
    println!(
        "\"last client started\": from the release to the last helper's fork of its command; \"all done\": to the last exit.\n"
    );
    drop(daemon);
    reap(&gate_pids);
}
