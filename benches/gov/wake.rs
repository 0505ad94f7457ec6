//! 10. Wake on input: from a host's line to the first byte of the reply.
//!
//! A real gate (`gov spawn`, this bench as its worker: it echoes each line
//! of its stdin) and a host holding its pipes. Taken in alternation, in one
//! run: the reply of the gate running (unfrozen), and the reply of the same
//! gate suspended by the reaper and woken by the line (no touch). Then a
//! `--hibernate` gate holding HIB_MB MB of non-zero memory, dumped to disk,
//! restored by the line. The goals: suspended p50 within 1 ms of unfrozen,
//! hibernated (200 MB) p50 under 0.4 s. Then, per size in
//! GOV_BENCH_WAKE_TOUCH_MB, a hibernated gate's `gov touch`: the time to
//! the daemon's answer, which comes once the worker runs (issue 21), not
//! once its memory is all back.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// The worker mode: `gov-bench --wake-echo MB` fills MB MB with non-zero
/// bytes, says "ready", then answers each line with it.
pub const HELPER: &str = "--wake-echo";

pub fn helper(args: &[String]) {
    let mb: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    let heap: Vec<u8> = (0..mb << 20).map(|i| (i % 251) as u8 | 1).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "ready {}", heap.len());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    std::hint::black_box(&heap);
}

struct Host {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    gate: String,
}

impl Host {
    fn start(socket: &Path, root: &Path, hibernate: bool, mb: usize) -> Host {
        let mut cmd = Command::new(gov_bin());
        cmd.env("GOV_SOCKET", socket)
            .env("GOV_CGROUP_ROOT", root)
            .arg("spawn")
            .args(hibernate.then_some("--hibernate"))
            .args(["--project", "/bench/wake", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([HELPER, &mb.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("gov spawn starts");
        let to = child.stdin.take().unwrap();
        let mut from = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        from.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("ready"), "the worker said {ready:?}");
        let gate = gate_of(child.id(), root);
        Host {
            child,
            to,
            from,
            gate,
        }
    }

    /// A line to the worker, and the time until its reply's first byte.
    fn round_trip(&mut self, n: usize) -> f64 {
        let line = format!("line {n}\n");
        let t = Instant::now();
        self.to.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        self.from.read_line(&mut reply).unwrap();
        let took = us(t.elapsed());
        assert_eq!(reply, line, "the worker's reply");
        took
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id of the gate that process `pid` lives in.
fn gate_of(pid: u32, root: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let name = root.file_name().unwrap().to_str().unwrap();
        if let Some(id) = text
            .lines()
            .find(|l| l.contains(name))
            .and_then(|l| l.rsplit('/').next())
            .filter(|id| id.starts_with('g'))
        {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "process {pid} in no gate");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the daemon says gate `id` is in `state` (its watch is armed
/// by then: the owner arms it before it publishes the state).
fn wait_state(socket: &Path, id: &str, state: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let req = format!("{{\"v\":1,\"type\":\"show\",\"gate\":\"{id}\"}}");
    let want = format!("\"state\":\"{state}\"");
    loop {
        check_stop();
        if try_call(socket, &req, Duration::from_secs(5)).is_some_and(|r| r.contains(&want)) {
            return;
        }
        assert!(Instant::now() < deadline, "gate {id} never {state}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until gate `id` has been dumped `n` times (its `hibernated`
/// events).
fn wait_dumps(socket: &Path, id: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let req = "{\"v\":1,\"type\":\"events\"}";
    let needle = format!("\"gate\":\"{id}\",");
    loop {
        check_stop();
        let dumps = try_call(socket, req, Duration::from_secs(5)).map_or(0, |r| {
            r.split("{\"time_ms\"")
                .filter(|e| e.contains(&needle) && e.contains("\"kind\":\"hibernated\""))
                .count()
        });
        if dumps >= n {
            wait_state(socket, id, "hibernated", timeout);
            return;
        }
        assert!(Instant::now() < deadline, "gate {id} not dumped {n} times");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn criu() -> Option<PathBuf> {
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/.cache/criu/4.2.1/criu");
    std::env::var_os("GOV_CRIU")
        .map(PathBuf::from)
        .or_else(|| cached.exists().then_some(cached))
}

pub fn run(root: &BenchRoot, tmp: &Path) {
    let n = env_usize("GOV_BENCH_WAKE_N", if quick() { 10 } else { 50 });
    let hib_n = env_usize("GOV_BENCH_WAKE_HIB_N", if quick() { 3 } else { 10 });
    let hib_mb = env_usize("GOV_BENCH_WAKE_HIB_MB", 200);
    println!("## 10. Wake on input ({n} rounds; hibernated: {hib_n} rounds at {hib_mb} MB)\n");
    let droot = root.sub("wake");
    let socket = tmp.join("wake.sock");
    let config = tmp.join("wake.toml");
    let criu = criu();
    let images = tmp.join("wake-images");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nscan_interval = \"100ms\"\nhibernate_dir = {:?}\n{}\
             [defaults]\nidle_timeout = \"1s\"\nwake_quiet = \"50ms\"\nbusy_cpu_percent = 20.0\n\
             frozen_hold = \"1h\"\norphan_grace = \"never\"\nhibernate_after = \"0s\"\n",
            socket.display().to_string(),
            images.display().to_string(),
            criu.as_ref()
                .map(|c| format!("criu_path = {:?}\n", c.display().to_string()))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&droot, &config, &socket, &tmp.join("wake-daemon.log"), None);

    let mut host = Host::start(&socket, &droot, false, 0);
    let (mut running, mut woken) = (Vec::new(), Vec::new());
    for i in 0..n {
        // Running: a reply at once after the last one (a wake leaves it
        // awake for wake_quiet).
        running.push(host.round_trip(2 * i));
        wait_state(&socket, &host.gate, "suspended", Duration::from_secs(30));
        woken.push(host.round_trip(2 * i + 1));
    }
    let (running, woken) = (Stats::new(running), Stats::new(woken));
    let mut t = Table::new(&["gate", "n", "p50 ms", "p90 ms", "max ms"]);
    for (name, s) in [
        ("running (unfrozen)", &running),
        ("suspended, woken by the line", &woken),
    ] {
        t.row(vec![
            name.into(),
            s.n().to_string(),
            ms(s.p(50.0)),
            ms(s.p(90.0)),
            ms(s.max()),
        ]);
    }
    let extra_ms = (woken.p(50.0) - running.p(50.0)) / 1000.0;
    drop(host);

    let hib = criu.as_ref().map(|_| {
        let mut host = Host::start(&socket, &droot, true, hib_mb);
        let mut times = Vec::new();
        for i in 0..hib_n {
            // Dumped again since the last round: a lazy restore shows
            // `hibernated` until its last page is back, while the worker
            // already runs, so the state alone would not do.
            wait_dumps(&socket, &host.gate, i + 1, Duration::from_secs(120));
            times.push(host.round_trip(i));
        }
        Stats::new(times)
    });
    if let Some(s) = &hib {
        t.row(vec![
            format!("hibernated ({hib_mb} MB), restored by the line"),
            s.n().to_string(),
            ms(s.p(50.0)),
            ms(s.p(90.0)),
            ms(s.max()),
        ]);
    }
    let touch_sizes = env_list(
        "GOV_BENCH_WAKE_TOUCH_MB",
        if quick() { &[200] } else { &[200, 1024, 2048] },
    );
    for &mb in touch_sizes.iter().filter(|_| criu.is_some()) {
        let mut host = Host::start(&socket, &droot, true, mb);
        let req = format!("{{\"v\":1,\"type\":\"touch\",\"gate\":\"{}\"}}", host.gate);
        let mut times = Vec::new();
        for i in 0..hib_n {
            wait_dumps(&socket, &host.gate, i + 1, Duration::from_secs(300));
            let t = Instant::now();
            let reply = try_call(&socket, &req, Duration::from_secs(120)).unwrap_or_default();
            times.push(us(t.elapsed()));
            assert!(reply.contains("done"), "touch: {reply}");
            // It runs: it answers (once the pages it needs are back).
            host.round_trip(i);
        }
        let s = Stats::new(times);
        t.row(vec![
            format!("hibernated ({mb} MB), `gov touch` answered"),
            s.n().to_string(),
            ms(s.p(50.0)),
            ms(s.p(90.0)),
            ms(s.max()),
        ]);
    }
    t.print();
    println!(
        "Suspended p50 is {extra_ms:.3} ms over running (goal: within 1 ms){}.\n",
        hib.as_ref()
            .map(|s| format!(
                "; hibernated p50 {:.3} s (goal: under 0.4 s at 200 MB)",
                s.p(50.0) / 1e6
            ))
            .unwrap_or_else(|| "; hibernated: skipped, no CRIU".into())
    );
    drop(daemon);
}
