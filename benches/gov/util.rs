//! What every scenario needs: knobs from the environment, statistics, a
//! cgroup root of the bench's own, process trees born inside a cgroup,
//! a daemon of the bench's own, and cleanup that runs on drop, on panic and
//! on SIGINT/SIGTERM. The daemon, its policy file, the raw protocol client
//! and the teardown of a cgroup tree are the test kit's (gov-testkit), as
//! the tests use them; what is here is the bench's own.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gov::cgroup::Cgroup;
use gov::gate::{GateDir, Tags, Tree};

// ---------------------------------------------------------------------------
// Knobs

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

pub fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

pub fn quick() -> bool {
    std::env::var("GOV_BENCH_QUICK").is_ok_and(|v| v != "0")
}

// ---------------------------------------------------------------------------
// Statistics

/// Order statistics of a sample, in the unit it was recorded in.
#[derive(Debug, Clone)]
pub struct Stats {
    pub sorted: Vec<f64>,
}

impl Stats {
    pub fn new(mut v: Vec<f64>) -> Stats {
        v.sort_by(|a, b| a.total_cmp(b));
        Stats { sorted: v }
    }
    pub fn n(&self) -> usize {
        self.sorted.len()
    }
    /// Nearest-rank percentile.
    pub fn p(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }
    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }
    pub fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len().max(1) as f64
    }
}

/// Median of paired differences a[i] - b[i] (runs taken side by side).
pub fn paired_median(a: &[f64], b: &[f64]) -> f64 {
    Stats::new(a.iter().zip(b).map(|(x, y)| x - y).collect()).p(50.0)
}

/// A small deterministic RNG for interleaving orders (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A markdown table, printed as it is built.
pub struct Table {
    widths: Vec<usize>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            widths: header.iter().map(|h| h.len()).collect(),
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        for (w, c) in self.widths.iter_mut().zip(&cells) {
            *w = (*w).max(c.chars().count());
        }
        self.rows.push(cells);
    }
    pub fn print(&self) {
        let line = |cells: &Vec<String>| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&self.widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        println!("{}", line(&self.rows[0]));
        let sep: Vec<String> = self.widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("|-{}-|", sep.join("-|-"));
        for r in &self.rows[1..] {
            println!("{}", line(r));
        }
        println!();
    }
}

pub fn f1(v: f64) -> String {
    format!("{v:.1}")
}
pub fn f2(v: f64) -> String {
    format!("{v:.2}")
}
pub fn ms(v_us: f64) -> String {
    format!("{:.2}", v_us / 1000.0)
}

// ---------------------------------------------------------------------------
// Cleanup registry: what a signal must undo if the bench is interrupted.

#[derive(Default)]
struct Registry {
    roots: Vec<PathBuf>,
    daemons: Vec<i32>,
    children: HashSet<i32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut g = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Registry::default))
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and starts one thread that
/// waits for them, undoes everything the bench created, and exits 130.
/// Must run before any other thread starts (threads inherit the mask).
pub fn install_signal_cleanup() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().expect("blocking signals");
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("\ngov-bench: {sig:?}: stopping and cleaning up");
            // Stop making things, and make the main thread unwind: its
            // drops and its final cleanup undo what it made, including
            // anything it made after this moment.
            STOPPING.store(true, Ordering::SeqCst);
            let daemons = with_registry(|r| r.daemons.clone());
            for pid in daemons {
                // No waitpid here: the main thread's guard reaps it, and an
                // unreaped pid cannot be recycled under that guard.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while !MAIN_DONE.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The main thread is stuck or gone: undo what is registered.
            cleanup_everything();
            std::process::exit(130);
        }
    });
}

static STOPPING: AtomicBool = AtomicBool::new(false);
static MAIN_DONE: AtomicBool = AtomicBool::new(false);

/// Has SIGINT/SIGTERM asked the bench to stop?
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// The main thread has cleaned up after itself; the signal thread may exit.
pub fn main_done() {
    MAIN_DONE.store(true, Ordering::SeqCst);
}

/// Unwinds (quietly, without the panic hook) when the bench is stopping.
pub fn check_stop() {
    if stopping() {
        std::panic::resume_unwind(Box::new("interrupted"));
    }
}

/// A sleep that ends early (unwinding) when the bench is stopping.
pub fn nap(d: Duration) {
    let end = Instant::now() + d;
    loop {
        check_stop();
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Undoes everything still registered: daemons, cgroup roots (killing
/// their trees), our children, temp dirs.
pub fn cleanup_everything() {
    let (daemons, roots, children, dirs) = with_registry(|r| {
        (
            std::mem::take(&mut r.daemons),
            std::mem::take(&mut r.roots),
            std::mem::take(&mut r.children),
            std::mem::take(&mut r.dirs),
        )
    });
    for pid in &daemons {
        stop_pid(*pid, Duration::from_secs(5));
    }
    for root in roots.iter().rev() {
        gov_testkit::remove_tree(root);
    }
    for pid in children {
        kill_and_reap(pid);
    }
    for d in dirs {
        let _ = fs::remove_dir_all(d);
    }
}

pub fn register_dir(p: &Path) {
    with_registry(|r| r.dirs.push(p.to_path_buf()));
}

/// SIGTERM, then SIGKILL after `grace`; reaps the process (our child).
fn stop_pid(pid: i32, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        let _ = waitpid(p, Some(WaitPidFlag::WNOHANG));
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match waitpid(p, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    let _ = kill(p, Signal::SIGKILL);
    let _ = waitpid(p, None);
}

fn kill_and_reap(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(p, None);
}

// ---------------------------------------------------------------------------
// cgroups of our own

/// `<cgroup2>/gov-bench-<pid>`: every cgroup the bench makes lives below it,
/// and it is killed and removed on drop (and on SIGINT/SIGTERM).
pub struct BenchRoot {
    pub mount: PathBuf,
    pub path: PathBuf,
}

impl BenchRoot {
    pub fn new() -> BenchRoot {
        let mount = gov::cgroup::cgroup2_mount().expect("cgroup2 is mounted");
        remove_stale_roots(&mount);
        let path = mount.join(format!("gov-bench-{}", std::process::id()));
        Cgroup::new(&path)
            .create()
            .unwrap_or_else(|e| panic!("creating the bench's cgroup root: {e}"));
        with_registry(|r| r.roots.push(path.clone()));
        BenchRoot { mount, path }
    }

    /// A child cgroup directory of the root (created).
    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        Cgroup::new(&p)
            .create_if_missing()
            .expect("mkdir in the bench root");
        p
    }
}

impl Drop for BenchRoot {
    fn drop(&mut self) {
        gov_testkit::remove_tree(&self.path);
        with_registry(|r| r.roots.retain(|p| p != &self.path));
    }
}

/// Roots left by an earlier bench run that was SIGKILLed (its pid is gone).
/// Only `gov-bench-<pid>` directories: nothing else is ours.
fn remove_stale_roots(mount: &Path) {
    let Ok(entries) = fs::read_dir(mount) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gov-bench-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("gov-bench: removing a stale root {}", e.path().display());
            gov_testkit::remove_tree(&e.path());
        }
    }
}

/// Waits for `populated 0`, re-reading cgroup.events at least every `step`
/// (the kernel rate-limits its notifications to ~100/s per file).
pub fn wait_events_tight(
    path: &Path,
    timeout: Duration,
    step: Duration,
    done: impl Fn(&str) -> bool,
) -> std::io::Result<()> {
    let mut f = fs::File::open(path.join("cgroup.events"))?;
    let start = Instant::now();
    let mut buf = String::with_capacity(64);
    loop {
        buf.clear();
        f.seek(SeekFrom::Start(0))?;
        f.read_to_string(&mut buf)?;
        if done(&buf) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{}: {buf:?}", path.display()),
            ));
        }
        let mut fds = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLPRI,
        )];
        let ms = nix::poll::PollTimeout::try_from(step.as_millis().max(1) as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let _ = nix::poll::poll(&mut fds, ms);
    }
}

pub fn unpopulated(events: &str) -> bool {
    events.contains("populated 0")
}
pub fn frozen(events: &str) -> bool {
    events.contains("frozen 1")
}

pub fn wait_unpopulated(path: &Path, timeout: Duration) -> std::io::Result<()> {
    wait_events_tight(path, timeout, Duration::from_millis(1), unpopulated)
}

/// CPU time of a cgroup in microseconds (cpu.stat usage_usec; 0 if gone).
pub fn cgroup_usage_usec(path: &Path) -> u64 {
    Cgroup::new(path).read_cpu_usage_usec().unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Process trees

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// libc's constant truncates to 0 on some versions; this is the kernel's.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `n` processes born inside cgroup `dir` (clone3 with CLONE_INTO_CGROUP, no
/// migration), each a copy of the bench that closes its fds and sleeps in
/// pause(2) until killed. They are our children: `reap` them after a kill.
pub fn fork_into(dir: &Path, n: usize) -> Vec<i32> {
    clone_into(dir, n, None)
}

/// One process in cgroup `dir` that burns about `percent`% of a core: it
/// spins for 1 ms, then sleeps, forever.
pub fn fork_busy_into(dir: &Path, percent: u64) -> Vec<i32> {
    clone_into(dir, 1, Some(percent.clamp(1, 100)))
}

fn clone_into(dir: &Path, n: usize, busy_percent: Option<u64>) -> Vec<i32> {
    let cdir = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a plain open(2) of a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd as u64,
        ..Default::default()
    };
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        if stopping() {
            unsafe { libc::close(fd) };
            with_registry(|reg| reg.children.extend(pids.iter().copied()));
            check_stop();
        }
        // SAFETY: clone3 without a new stack behaves like fork(2). The child
        // runs only async-signal-safe calls (close_range, pause,
        // clock_gettime, nanosleep) and never returns, so no lock or
        // allocator state of other threads is ever touched in it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r == 0 {
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                match busy_percent {
                    None => loop {
                        libc::pause();
                    },
                    Some(p) => spin_forever(p),
                }
            }
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            unsafe { libc::close(fd) };
            reap(&pids);
            panic!("clone3 into {}: {e}", dir.display());
        }
        pids.push(r as i32);
    }
    unsafe { libc::close(fd) };
    with_registry(|reg| reg.children.extend(pids.iter().copied()));
    pids
}

/// The busy child's loop: 1 ms of spinning, then (100/p - 1) ms of sleep.
unsafe fn spin_forever(percent: u64) -> ! {
    let now_ns = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let sleep_ns = (100 / percent).saturating_sub(1) as i64 * 1_000_000;
    loop {
        let t0 = now_ns();
        while now_ns() - t0 < 1_000_000 {}
        let ts = libc::timespec {
            tv_sec: sleep_ns / 1_000_000_000,
            tv_nsec: sleep_ns % 1_000_000_000,
        };
        libc::nanosleep(&ts, std::ptr::null_mut());
    }
}

/// SIGKILL (a no-op for the already dead) and waitpid each child.
pub fn reap(pids: &[i32]) {
    for &p in pids {
        kill_and_reap(p);
    }
    with_registry(|reg| {
        for p in pids {
            reg.children.remove(p);
        }
    });
}

/// A gate made the way the daemon makes one (tags first, then a process),
/// owned by the bench process (alive throughout, as a host would be).
pub fn make_gate(tree: &Tree, project: &str, procs: usize) -> (GateDir, Vec<i32>) {
    check_stop();
    let me = std::process::id();
    let tags = Tags {
        project: project.to_string(),
        session: format!("bench{:x}", rand_u32()),
        owner_uid: 0,
        owner_pid: Some(me),
        owner_start: gov::proc::start_time(me),
        created_ms: gov::gate::now_ms(),
        ..Default::default()
    };
    let dir = tree.create_gate(&tags).expect("creating a gate");
    let pids = fork_into(dir.cgroup.path(), procs);
    if let Some(&main) = pids.first() {
        let _ = dir.cgroup.write_tag("main_pid", &main.to_string());
    }
    (dir, pids)
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

// ---------------------------------------------------------------------------
// The gov binary and a daemon of our own

pub use gov_testkit::{gov_bin, Conn};

/// A policy file: our socket, the scan interval, a long history, nothing
/// idle for a day, and `extra` (tables).
pub fn write_config(path: &Path, socket: &Path, scan_interval: &str, extra: &str) {
    gov_testkit::write_policy(
        path,
        socket,
        &format!(
            "scan_interval = {scan_interval:?}\nevent_history = 1000000\n\n[defaults]\nidle_timeout = \"24h\"\n{extra}"
        ),
    );
}

/// The kit's daemon, registered for the signal cleanup, with what the
/// scenarios measure it by.
pub struct Daemon {
    daemon: gov_testkit::Daemon,
    pub socket: PathBuf,
    /// The daemon's own leaf cgroup (it moves itself there at start).
    pub cgroup: PathBuf,
    pub started: Instant,
}

impl Daemon {
    /// `gov daemon --config CONFIG` on cgroup root `root`, logging to `log`.
    /// `nofile`: a soft RLIMIT_NOFILE to start it with (systemd's default
    /// is 1024), else ours is inherited.
    pub fn start(
        root: &Path,
        config: &Path,
        socket: &Path,
        log: &Path,
        nofile: Option<u64>,
    ) -> Daemon {
        let mut cmd = Command::new(gov_bin());
        cmd.env("GOV_CGROUP_ROOT", root)
            .env("GOV_LOG", "info")
            .env_remove("GOV_SOCKET");
        if let Some(n) = nofile {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = n.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let daemon = gov_testkit::Daemon::launch(cmd, config, socket, log);
        with_registry(|r| r.daemons.push(daemon.pid() as i32));
        Daemon {
            daemon,
            socket: socket.to_path_buf(),
            cgroup: root.join("daemon"),
            started,
        }
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn conn(&self) -> Conn {
        Conn::connect(&self.socket)
    }

    /// Waits until the daemon tracks `n` running gates (adoption by scan).
    pub fn wait_running(&self, n: usize, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        let mut c = self.conn();
        loop {
            if self.running_gates(&mut c) >= n {
                return self.started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not adopt {n} gates within {timeout:?} (has {})",
                self.running_gates(&mut c)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running_gates(&self, c: &mut Conn) -> usize {
        let reply = c.call(r#"{"type":"metrics"}"#);
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
        let text = v["text"].as_str().unwrap_or("");
        text.lines()
            .find_map(|l| l.strip_prefix("gov_gates{state=\"running\"} "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime of the daemon in clock ticks, from /proc/PID/stat.
    pub fn ticks(&self) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        // after "pid (comm)": state is field 3, utime 14, stime 15.
        let get = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        get(14) + get(15)
    }

    /// A line of /proc/PID/status in kB (VmRSS, VmHWM), or a count (Threads).
    pub fn status(&self, key: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(':')?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    pub fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// CPU time of the daemon process in microseconds, including threads
    /// that already exited (its cgroup's cpu.stat).
    pub fn usage_usec(&self) -> u64 {
        cgroup_usage_usec(&self.cgroup)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(10));
        let pid = self.daemon.pid() as i32;
        with_registry(|r| r.daemons.retain(|p| *p != pid));
    }
}

/// One request on a fresh connection (what `gov touch` does); Err says
/// what went wrong (for counting error kinds).
pub fn one_shot(socket: &Path, request: &[u8]) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {}", e.kind()))?;
    s.write_all(request)
        .map_err(|e| format!("send: {}", e.kind()))?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    loop {
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if buf[..got].contains(&b'\n') || got == buf.len() {
                    break;
                }
            }
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
    }
    if buf[..got].windows(13).any(|w| w == b"\"type\":\"done\"") {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&buf[..got]);
        Err(format!(
            "reply: {}",
            text.trim().chars().take(100).collect::<String>()
        ))
    }
}

/// Waits until the daemon knows gate `id` (adopted at a scan).
pub fn wait_known(c: &mut Conn, id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let req = format!(r#"{{"type":"show","gate":"{id}"}}"#);
    loop {
        if c.call(&req).contains(r#""type":"gate""#) {
            return;
        }
        assert!(Instant::now() < deadline, "daemon did not adopt {id}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Load of the machine over the last minute, for the report header.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One request with a deadline; None when the daemon does not answer.
pub fn try_call(socket: &Path, request: &str, timeout: Duration) -> Option<String> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    s.write_all(b"\n").ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    (!line.is_empty()).then_some(line)
}

/// How much runnable work waited for a CPU lately (PSI "some" avg10 and
/// avg60, in %): other load on the machine that a run shared it with.
pub fn cpu_pressure() -> String {
    let text = fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    let some = text.lines().find(|l| l.starts_with("some")).unwrap_or("");
    let get = |k: &str| {
        some.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or("?")
            .to_string()
    };
    format!("{}% (10 s), {}% (60 s)", get("avg10="), get("avg60="))
}

/// One line on the machine's other load, printed after each scenario.
pub fn conditions() {
    println!(
        "_conditions: load average {}, CPU pressure (some) {}_\n",
        loadavg(),
        cpu_pressure()
    );
}
