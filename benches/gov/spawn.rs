//! 1. Spawn overhead, and the client's own cost on the hot path.
//!
//! Each iteration runs every variant once, in a shuffled order, so drift
//! (other load, frequency, page cache) hits all of them alike. Every variant
//! is one fork+exec+wait from the bench with the same environment, stdio and
//! launcher, so differences are what gov adds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gov::gate::Tree;

use crate::util::*;

#[derive(Clone, Copy, PartialEq)]
enum V {
    True,
    BareMigrate,
    EnvTrue,
    Version,
    Touch,
    RawTouch,
    SpawnDaemon,
    SpawnDirect,
    SpawnRequest,
    SystemdRun,
    AltVersion,
    AltTouch,
    AltSpawn,
}

/// argv[1] of the bench binary run as a spawn-request helper.
pub const HELPER: &str = "__gov_bench_spawn_request";

/// One `spawn` request on a new connection, as `gov spawn` sends it (owner:
/// our parent, the bench); prints the round trip in microseconds. The daemon
/// moves this helper process into the new gate; it then just exits.
pub fn helper(socket: &str) {
    let req = b"{\"type\":\"spawn\",\"project\":\"/bench/spawn-request\",\"session\":\"s1\"}\n";
    let t0 = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    use std::io::{BufRead, Write};
    s.write_all(req).expect("send");
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .expect("reply");
    let t = t0.elapsed();
    assert!(line.contains("\"type\":\"spawned\""), "spawn: {line}");
    println!("{}", us(t));
}

impl V {
    fn name(self) -> &'static str {
        match self {
            V::True => "`/bin/true` (baseline)",
            V::BareMigrate => {
                "bare migration: mkdir, child writes its pid to cgroup.procs, exec /bin/true"
            }
            V::EnvTrue => "`env /bin/true` (any exec wrapper's floor)",
            V::Version => "`gov --version` (process floor)",
            V::Touch => "`gov touch GATE`",
            V::RawTouch => "touch, in-process new connection",
            V::SpawnDaemon => "`gov spawn -- /bin/true`, daemon",
            V::SpawnDirect => "`gov spawn -- /bin/true`, root direct",
            V::SpawnRequest => "spawn request round trip only (daemon side)",
            V::SystemdRun => "`systemd-run --scope /bin/true`",
            V::AltVersion => "`gov --version`, GOV_BENCH_ALT_BIN",
            V::AltTouch => "`gov touch GATE`, GOV_BENCH_ALT_BIN",
            V::AltSpawn => "`gov spawn -- /bin/true`, daemon, GOV_BENCH_ALT_BIN",
        }
    }
}

pub fn run(root: &BenchRoot, tmp: &Path) {
    let n = env_usize("GOV_BENCH_SPAWN_N", if quick() { 100 } else { 250 });
    println!("## 1. Spawn overhead and client cost ({n} runs of each, interleaved)\n");

    let daemon_root = root.sub("spawn");
    let direct_root = root.sub("spawn-direct");
    let socket = tmp.join("spawn.sock");
    let config = tmp.join("spawn.toml");
    write_config(&config, &socket, "5s", "");

    // A gate for the touch variants: one sleeping process, made before the
    // daemon starts so its first (full) pass adopts it; later, a gate made
    // behind the daemon's back is only found by a full pass.
    let tree = Tree::at(root.mount.clone(), &daemon_root.display().to_string()).unwrap();
    let (gate, gate_pids) = make_gate(&tree, "/bench/touch", 1);
    let daemon = Daemon::start(
        &daemon_root,
        &config,
        &socket,
        &tmp.join("spawn-daemon.log"),
        None,
    );
    wait_known(&mut daemon.conn(), &gate.id, Duration::from_secs(15));
    let touch_line = format!("{{\"type\":\"touch\",\"gate\":\"{}\"}}\n", gate.id);

    let gov = gov_bin();
    let none_socket = tmp.join("no-daemon.sock");
    let systemd = Path::new("/run/systemd/system").exists();
    let bare_root = root.sub("spawn-bare");
    let mut variants = vec![
        V::True,
        V::BareMigrate,
        V::EnvTrue,
        V::Version,
        V::Touch,
        V::RawTouch,
        V::SpawnDaemon,
        V::SpawnDirect,
        V::SpawnRequest,
    ];
    if systemd {
        variants.push(V::SystemdRun);
    }
    // Another build of gov (e.g. with LTO, panic=abort, static), for the
    // client-side rows only; the daemon stays the one under test.
    let alt = std::env::var_os("GOV_BENCH_ALT_BIN").map(std::path::PathBuf::from);
    if let Some(a) = &alt {
        println!("GOV_BENCH_ALT_BIN = {}\n", a.display());
        variants.extend([V::AltVersion, V::AltTouch, V::AltSpawn]);
    }

    let command = |v: V| -> Command {
        let mut c = match v {
            V::True => Command::new("/bin/true"),
            V::EnvTrue => {
                let mut c = Command::new("/usr/bin/env");
                c.arg("/bin/true");
                c
            }
            V::SystemdRun => {
                let mut c = Command::new("systemd-run");
                c.args(["--scope", "--quiet", "/bin/true"]);
                c
            }
            V::SpawnRequest => {
                let mut c = Command::new(std::env::current_exe().unwrap());
                c.arg(HELPER).arg(&socket);
                c
            }
            V::AltVersion | V::AltTouch | V::AltSpawn => Command::new(alt.as_ref().unwrap()),
            _ => Command::new(&gov),
        };
        match v {
            V::Version | V::AltVersion => {
                c.arg("--version");
            }
            V::Touch | V::AltTouch => {
                c.args(["touch", &gate.id]);
            }
            V::SpawnDaemon | V::SpawnDirect | V::AltSpawn => {
                c.args(["spawn", "--project", "/bench/spawn", "--", "/bin/true"]);
            }
            _ => {}
        }
        // The same environment for every variant: one launcher path.
        let (sock, cg) = match v {
            V::SpawnDirect => (none_socket.as_path(), direct_root.as_path()),
            _ => (socket.as_path(), daemon_root.as_path()),
        };
        c.env("GOV_SOCKET", sock)
            .env("GOV_CGROUP_ROOT", cg)
            .stdin(Stdio::null())
            .stdout(if v == V::SpawnRequest {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        c
    };

    // Warm up the page cache and the daemon.
    for &v in &variants {
        if v != V::RawTouch && v != V::SpawnRequest && v != V::BareMigrate {
            let _ = command(v).output();
        }
    }
    let bare_seq = std::cell::Cell::new(0u64);
    let measure = |variants: &[V], n: usize, quiet: Duration, seed: u64| -> Vec<Vec<f64>> {
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(n); variants.len()];
        let mut rng = Rng::new(seed);
        let mut order: Vec<usize> = (0..variants.len()).collect();
        let mut failures = Vec::new();
        for _ in 0..n {
            rng.shuffle(&mut order);
            for &i in &order {
                let v = variants[i];
                nap(quiet);
                let t = if v == V::BareMigrate {
                    bare_seq.set(bare_seq.get() + 1);
                    match bare_migration(&bare_root, bare_seq.get(), command(V::True)) {
                        Ok(t) => t,
                        Err(e) => {
                            failures.push(format!("{}: {e}", v.name()));
                            Duration::ZERO
                        }
                    }
                } else if v == V::RawTouch {
                    let t0 = Instant::now();
                    let r = one_shot(&socket, touch_line.as_bytes());
                    let t = t0.elapsed();
                    if let Err(e) = r {
                        failures.push(format!("{}: {e}", v.name()));
                    }
                    t
                } else {
                    let mut c = command(v);
                    let t0 = Instant::now();
                    let out = c.output().expect("spawning");
                    let mut t = t0.elapsed();
                    if v == V::SpawnRequest && out.status.success() {
                        // The helper's own measurement, not its process's wall.
                        let text = String::from_utf8_lossy(&out.stdout);
                        t = Duration::from_secs_f64(
                            text.trim()
                                .parse::<f64>()
                                .expect("helper prints microseconds")
                                / 1e6,
                        );
                    }
                    if !out.status.success() {
                        failures.push(format!(
                            "{}: {} {}",
                            v.name(),
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                    t
                };
                samples[i].push(us(t));
            }
        }
        assert!(
            failures.is_empty(),
            "{} runs failed, first: {}",
            failures.len(),
            failures[0]
        );
        samples
    };
    let samples = measure(&variants, n, Duration::ZERO, 0x5eed);
    print_table(&variants, &samples);

    // Spawns back to back find the kernel's cgroup_threadgroup_rwsem still
    // in its writer-friendly state; a spawn after a quiet moment (the usual
    // case: a host starts a gate now and then) pays an RCU grace period for
    // the cgroup.procs write. Same variants, 100 ms of quiet before each.
    let b2b = ratios(&variants, &samples);
    println!(
        "back to back: gov spawn (daemon) overhead {} ms over /bin/true, bare migration's {} ms: {:.2}x (paired medians {:.2}x); target within 2x -> {}\n",
        ms(b2b.gov),
        ms(b2b.bare),
        b2b.ratio(),
        b2b.paired_ratio(),
        if b2b.paired_ratio() <= 2.0 { "MET" } else { "MISSED" }
    );

    // Spawns back to back find the kernel's cgroup_threadgroup_rwsem still
    // in its writer-friendly state; a spawn after a quiet moment (the usual
    // case: a host starts a gate now and then) pays an RCU grace period for
    // the cgroup.procs write, and so does the bare migration. Same variants,
    // 100 ms of quiet before each, in several rounds (the grace period's
    // length moves between rounds).
    let isolated_n = env_usize("GOV_BENCH_SPAWN_ISOLATED", if quick() { 10 } else { 30 });
    let rounds = env_usize(
        "GOV_BENCH_SPAWN_ISOLATED_ROUNDS",
        if quick() { 2 } else { 4 },
    );
    if isolated_n > 0 && rounds > 0 {
        let iso = [
            V::True,
            V::BareMigrate,
            V::SpawnDaemon,
            V::SpawnDirect,
            V::SpawnRequest,
        ];
        let mut summary = Table::new(&[
            "round",
            "`/bin/true` p50 ms",
            "bare migration overhead ms (p50 / paired)",
            "gov spawn, daemon, overhead ms (p50 / paired)",
            "ratio (p50 / paired)",
            "root direct ratio (paired)",
            "verdict (paired <= 1.5x)",
        ]);
        for round in 1..=rounds {
            println!(
                "Isolated runs, round {round} of {rounds}: 100 ms of quiet before each ({isolated_n} runs of each, interleaved)\n"
            );
            let iso_samples = measure(
                &iso,
                isolated_n,
                Duration::from_millis(100),
                0x150 + round as u64,
            );
            print_table(&iso, &iso_samples);
            let r = ratios(&iso, &iso_samples);
            let direct = paired_median(&iso_samples[3], &iso_samples[0]) / r.bare_paired;
            summary.row(vec![
                round.to_string(),
                ms(Stats::new(iso_samples[0].clone()).p(50.0)),
                format!("{} / {}", ms(r.bare), ms(r.bare_paired)),
                format!("{} / {}", ms(r.gov), ms(r.gov_paired)),
                format!("{:.2}x / {:.2}x", r.ratio(), r.paired_ratio()),
                format!("{direct:.2}x"),
                if r.paired_ratio() <= 1.5 {
                    "MET"
                } else {
                    "MISSED"
                }
                .to_string(),
            ]);
        }
        println!(
            "Isolated rounds: gov's overhead over /bin/true as a ratio of the bare migration's\n"
        );
        summary.print();
    }
    if !systemd {
        println!("systemd is not PID 1 here: `systemd-run --scope` is not measured; the published figure is 8.4 ms (vs 0.28 ms for /usr/bin/true).\n");
    }
    let spawn =
        Stats::new(samples[variants.iter().position(|v| *v == V::SpawnDaemon).unwrap()].clone());
    let over = spawn.p(50.0) - Stats::new(samples[0].clone()).p(50.0);
    println!(
        "target: spawn p50 overhead < 1 ms (1/8 of systemd-run's 8.4 ms), back to back: {:.2} ms -> {}; p99 {:.2} ms\n",
        over / 1000.0,
        if over < 1000.0 { "MET" } else { "MISSED" },
        spawn.p(99.0) / 1000.0
    );

    drop(daemon);
    reap(&gate_pids);
}

fn print_table(variants: &[V], samples: &[Vec<f64>]) {
    let base = &samples[0];
    let bs = Stats::new(base.clone());
    let mut t = Table::new(&[
        "variant",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "p50 overhead ms",
        "p99 overhead ms",
        "paired median overhead ms",
        "p50 ratio",
    ]);
    for (i, v) in variants.iter().enumerate() {
        let s = Stats::new(samples[i].clone());
        let in_process = matches!(v, V::RawTouch | V::SpawnRequest);
        let (o50, o99, paired) = if i == 0 || in_process {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (
                ms(s.p(50.0) - bs.p(50.0)),
                ms(s.p(99.0) - bs.p(99.0)),
                ms(paired_median(&samples[i], base)),
            )
        };
        t.row(vec![
            v.name().to_string(),
            ms(s.p(50.0)),
            ms(s.p(90.0)),
            ms(s.p(99.0)),
            ms(s.mean()),
            o50,
            o99,
            paired,
            if in_process {
                "-".to_string()
            } else {
                format!("{:.2}x", s.p(50.0) / bs.p(50.0))
            },
        ]);
    }
    t.print();
}

/// gov spawn's and the bare migration's overheads over the baseline
/// (variant 0) in one table: p50 differences and paired medians, in us.
struct Ratios {
    bare: f64,
    gov: f64,
    bare_paired: f64,
    gov_paired: f64,
}

impl Ratios {
    fn ratio(&self) -> f64 {
        self.gov / self.bare
    }
    fn paired_ratio(&self) -> f64 {
        self.gov_paired / self.bare_paired
    }
}

fn ratios(variants: &[V], samples: &[Vec<f64>]) -> Ratios {
    let at = |v: V| variants.iter().position(|x| *x == v).unwrap();
    let p50 = |i: usize| Stats::new(samples[i].clone()).p(50.0);
    let (b, g) = (at(V::BareMigrate), at(V::SpawnDaemon));
    Ratios {
        bare: p50(b) - p50(0),
        gov: p50(g) - p50(0),
        bare_paired: paired_median(&samples[b], &samples[0]),
        gov_paired: paired_median(&samples[g], &samples[0]),
    }
}

/// The kernel's floor for putting a new process in a new cgroup, as gov
/// does it: mkdir a cgroup, fork, the child writes its own pid to the
/// cgroup's cgroup.procs and execs `cmd` (the baseline's /bin/true, same
/// environment and stdio), wait. Timed from the mkdir to the wait; the
/// empty cgroup is removed after.
fn bare_migration(parent: &Path, seq: u64, mut cmd: Command) -> Result<Duration, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let dir = parent.join(format!("m{seq}"));
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|e| e.to_string())?;
    // SAFETY: open, write and close are async-signal-safe; the path was
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    let t0 = Instant::now();
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let out = cmd.output();
    let t = t0.elapsed();
    // The child is reaped; its cgroup empties as it exits, so this retries
    // only for the moment the kernel takes to see that.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = std::fs::remove_dir(&dir) {
        if Instant::now() > deadline {
            return Err(format!("rmdir {}: {e}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = out.map_err(|e| format!("fork/exec into {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(t)
}
