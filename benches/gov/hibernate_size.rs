//! 9. Hibernation at the size gates really are (issue 21).
//!
//! A keeper gate whose worker (tests/fixtures/heap-worker.py) fills MB
//! megabytes with random bytes and answers a line on stdin, hibernated
//! and woken through `gov::hibernate` with real CRIU, eager and lazy
//! alternated. Per size: the dump (the worker's frozen time) and the image
//! on disk; the time from an input (a line written to the keeper's stdin
//! while the worker is hibernated, then the wake) to the worker's reply;
//! the time until all its memory is back; MemAvailable before, while
//! hibernated and after. Then what compressing the pages would cost
//! (zstd, lz4 on the image's pages files), for random bytes and for a
//! REPL-like heap of Python objects.
//!
//! Knobs: GOV_BENCH_HIBERNATE_MB (200,1024,4096), GOV_BENCH_HIBERNATE_REPS
//! (3), GOV_BENCH_HIBERNATE_OBJECTS_MB (1024; 0 skips), GOV_CRIU.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gov::cgroup::Cgroup;
use gov::criu::Criu;
use gov::hibernate::{self, Options};
use gov::record::Record;

use crate::util::*;

pub fn run(root: &BenchRoot, _tmp: &Path) {
    let sizes = env_list(
        "GOV_BENCH_HIBERNATE_MB",
        if quick() { &[200] } else { &[200, 1024, 4096] },
    );
    let reps = env_usize("GOV_BENCH_HIBERNATE_REPS", if quick() { 1 } else { 3 });
    let objects_mb = env_usize(
        "GOV_BENCH_HIBERNATE_OBJECTS_MB",
        if quick() { 0 } else { 1024 },
    );
    println!("## 9. Hibernation by size: eager and lazy restore ({reps} of each per size)\n");
    let Some(criu) = find_criu() else {
        println!("SKIP: no criu (GOV_CRIU, integration/build-criu or PATH)\n");
        return;
    };
    println!(
        "{criu}; lazy pages {}; images in {} (disk, not tmpfs)\n",
        if criu.lazy_pages_supported() {
            "supported"
        } else {
            "NOT supported (lazy rows are eager)"
        },
        images_base().display()
    );
    let mut main = Table::new(&[
        "gate",
        "restore",
        "input to reply p50 (max) s",
        "all memory back p50 s",
        "dump (frozen) p50 s",
        "frozen s/GiB",
        "image on disk MB",
        "MemAvailable before / hibernated / after MB",
    ]);
    let mut packs = Vec::new();
    for &mb in &sizes {
        let mut g = BenchGate::start(root, &criu, mb as u64, "random");
        for lazy in [false, true] {
            let mut rows = Vec::new();
            for _ in 0..reps {
                rows.push(g.cycle(lazy));
            }
            let stat = |f: fn(&Cycle) -> f64| Stats::new(rows.iter().map(f).collect());
            let reply = stat(|c| c.reply_s);
            let dump = stat(|c| c.dump_s);
            let last = rows.last().unwrap();
            main.row(vec![
                format!("{mb} MB"),
                if lazy { "lazy" } else { "eager" }.into(),
                format!("{:.3} ({:.3})", reply.p(0.5), reply.max()),
                format!("{:.3}", stat(|c| c.back_s).p(0.5)),
                format!("{:.2}", dump.p(0.5)),
                format!("{:.2}", dump.p(0.5) / (mb as f64 / 1024.0)),
                format!("{:.0}", last.image_bytes as f64 / 1e6),
                format!(
                    "{} / {} / {}",
                    last.mem_kb[0] / 1024,
                    last.mem_kb[1] / 1024,
                    last.mem_kb[2] / 1024
                ),
            ]);
        }
        g.check_sum();
        if mb <= 1024 {
            packs.push((format!("{mb} MB random"), g.pack()));
        }
    }
    main.print();
    if objects_mb > 0 {
        let mut g = BenchGate::start(root, &criu, objects_mb as u64, "objects");
        packs.push((format!("{objects_mb} MB Python objects"), g.pack()));
    }
    if !packs.is_empty() {
        let mut t = Table::new(&[
            "heap",
            "pages on disk MB",
            "zstd -1: MB, compress s, decompress s",
            "zstd -3",
            "lz4 -1",
        ]);
        for (name, p) in packs {
            let mut row = vec![name, format!("{:.0}", p.raw as f64 / 1e6)];
            row.extend(p.tools.iter().map(|t| {
                t.as_ref().map_or("n/a".into(), |(b, c, d)| {
                    format!(
                        "{:.0} ({:.0}%), {c:.2}, {d:.2}",
                        *b as f64 / 1e6,
                        100.0 * *b as f64 / p.raw as f64
                    )
                })
            }));
            t.row(row);
        }
        t.print();
    }
}

fn find_criu() -> Option<Criu> {
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/.cache/criu/4.2.1/criu");
    let explicit = std::env::var_os("GOV_CRIU")
        .map(PathBuf::from)
        .or_else(|| cached.exists().then_some(cached));
    Criu::find(explicit.as_deref()).ok()
}

fn images_base() -> PathBuf {
    PathBuf::from(format!(
        "/var/tmp/gov-bench-hibernate-{}",
        std::process::id()
    ))
}

fn mem_available_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Cycle {
    dump_s: f64,
    reply_s: f64,
    back_s: f64,
    image_bytes: u64,
    mem_kb: [u64; 3],
}

/// A keeper gate with a heap worker, and the host's side of its pipes
/// (every line the worker writes, with when it arrived).
struct BenchGate {
    criu: Criu,
    gate: Cgroup,
    dir: PathBuf,
    keeper: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(Instant, String)>,
    crc: String,
}

impl BenchGate {
    fn start(root: &BenchRoot, criu: &Criu, mb: u64, heap: &str) -> BenchGate {
        let gate = Cgroup::new(root.sub(&format!("hib-{heap}-{mb}")));
        let w = gate.child("w");
        w.create().expect("worker cgroup");
        let procs = gate.path().join("cgroup.procs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heap-worker.py");
        let mut c = Command::new(gov_bin());
        c.arg("keeper")
            .arg("--worker-cgroup")
            .arg(w.path())
            .arg("--")
            .arg("python3")
            .arg(script)
            .arg(mb.to_string())
            .arg(heap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: only a write(2) to a path prepared before the fork.
        unsafe {
            c.pre_exec(move || std::fs::write(&procs, "0"));
        }
        let mut keeper = c.spawn().expect("gov keeper starts");
        let out = keeper.stdout.take().unwrap();
        let stdin = keeper.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let dir = images_base().join(format!("{heap}-{mb}"));
        let mut g = BenchGate {
            criu: criu.clone(),
            gate,
            dir,
            keeper,
            stdin,
            lines,
            crc: String::new(),
        };
        let ready = g.line(Duration::from_secs(600));
        g.crc = ready
            .split_whitespace()
            .nth(2)
            .expect("ready PID CRC")
            .into();
        g
    }

    fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .map(|(_, l)| l)
            .unwrap_or_else(|e| panic!("no line from the worker within {within:?}: {e}"))
    }

    fn record(&self) -> Record {
        let mut m = self.gate.read_tags().unwrap_or_default();
        m.entry("project".into())
            .or_insert_with(|| "/bench/hibernate".into());
        m.entry("owner_uid".into()).or_insert_with(|| "0".into());
        let tags = gov::gate::Tags::from_map(&m).expect("tags");
        let frozen = self.gate.read_cgroup_events().expect("events").frozen;
        Record::found(
            Arc::new(self.gate.clone()),
            tags,
            frozen,
            gov::gate::now_ms(),
        )
    }

    fn keeper(&self) -> gov::keeper::Keeper {
        gov::keeper::Keeper::now(self.keeper.id()).expect("the keeper runs")
    }

    /// Suspend, hibernate; an input; wake (lazy or eager) until all memory
    /// is back.
    fn cycle(&mut self, lazy: bool) -> Cycle {
        let before = mem_available_kb();
        let dump_s = self.dump();
        let image_bytes = gov::criu::image_bytes(&self.dir).expect("image size");
        // The kernel frees the tree's pages as it exits; give it a moment.
        let mut hibernated = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            hibernated = hibernated.max(mem_available_kb());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The input: a line into the keeper's stdin pipe while the worker
        // is on disk, then the wake it causes.
        let t0 = Instant::now();
        writeln!(self.stdin, "ping").expect("write to the keeper");
        self.stdin.flush().unwrap();
        let opts = Options {
            lazy,
            ..Options::default()
        };
        hibernate::wake(
            &self.criu,
            &self.gate,
            &mut self.record(),
            self.keeper(),
            &self.dir,
            &opts,
        )
        .unwrap_or_else(|e| panic!("wake: {e}"));
        let back_s = t0.elapsed().as_secs_f64();
        let (at, pong) = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a reply to ping");
        assert_eq!(pong, "pong");
        let after = mem_available_kb();
        Cycle {
            dump_s,
            reply_s: at.duration_since(t0).as_secs_f64(),
            back_s,
            image_bytes,
            mem_kb: [before, hibernated, after],
        }
    }

    /// The whole heap is right after the cycles.
    fn check_sum(&mut self) {
        writeln!(self.stdin, "sum").unwrap();
        self.stdin.flush().unwrap();
        assert_eq!(
            self.line(Duration::from_secs(120)),
            format!("sum {}", self.crc)
        );
    }

    /// Suspends the gate and hibernates it; returns how long the dump
    /// took (the worker's frozen time).
    fn dump(&mut self) -> f64 {
        self.gate.freeze(Duration::from_secs(5)).expect("freeze");
        let t = Instant::now();
        hibernate::hibernate(
            &self.criu,
            &self.gate,
            &mut self.record(),
            self.keeper(),
            &self.dir,
            &Options::default(),
        )
        .unwrap_or_else(|e| panic!("hibernate: {e}"));
        t.elapsed().as_secs_f64()
    }

    /// Dumps once more and measures compressing the pages files.
    fn pack(&mut self) -> Pack {
        self.dump();
        let pages = gov::criu::pages_files(&self.dir).expect("pages files");
        let raw = pages
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let tools = [("zstd", "-1"), ("zstd", "-3"), ("lz4", "-1")]
            .iter()
            .map(|(tool, level)| pack_with(tool, level, &pages))
            .collect();
        gov::criu::remove_image(&self.dir).unwrap();
        // The image is gone: kill the gate rather than restore it.
        let _ = self.gate.kill_all(Duration::from_secs(10));
        Pack { raw, tools }
    }
}

impl Drop for BenchGate {
    fn drop(&mut self) {
        let _ = self.gate.kill_all(Duration::from_secs(10));
        let _ = self.keeper.kill();
        let _ = self.keeper.wait();
        let _ = gov::criu::remove_image(&self.dir);
        let _ = std::fs::remove_dir(images_base());
    }
}

struct Pack {
    raw: u64,
    /// Per tool: (bytes, compress s, decompress s).
    tools: Vec<Option<(u64, f64, f64)>>,
}

/// Compresses each file to FILE.z (one thread: the machine has two cores
/// and a dump competes with everything else), then decompresses it to
/// /dev/null, timing both; the .z files are removed.
fn pack_with(tool: &str, level: &str, files: &[PathBuf]) -> Option<(u64, f64, f64)> {
    let (mut bytes, mut c, mut d) = (0, 0.0, 0.0);
    for f in files {
        let z = f.with_extension("z");
        let t = Instant::now();
        let ok = Command::new(tool)
            .args([level, "-q", "-f", "-c"])
            .arg(f)
            .stdout(std::fs::File::create(&z).ok()?)
            .status()
            .ok()?
            .success();
        c += t.elapsed().as_secs_f64();
        bytes += std::fs::metadata(&z).ok()?.len();
        let t = Instant::now();
        let ok2 = Command::new(tool)
            .args(["-d", "-q", "-c"])
            .arg(&z)
            .stdout(Stdio::null())
            .status()
            .ok()?
            .success();
        d += t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&z);
        if !ok || !ok2 {
            return None;
        }
    }
    Some((bytes, c, d))
}
