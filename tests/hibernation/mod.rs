//! The harness of the hibernation tests (tests/hibernate.rs,
//! tests/hibernate_lazy.rs): a gate as the daemon makes it for `gov spawn
//! --hibernate`, a host that starts its keeper and reads its stdout, and
//! the gate's record as a daemon would find it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use gov::cgroup::Cgroup;
use gov::gate::Tags;
use gov::reaper::Phase;
use gov::record::{self, Record};
use gov_testkit as common;
use gov_testkit::TestRoot;

pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A gate as the daemon would make it for `gov spawn --hibernate`:
/// `<root>/g` for the keeper, `<root>/g/w` for the worker.
pub struct Gate {
    pub root: TestRoot,
    pub gate: Cgroup,
    pub w: Cgroup,
}

impl Gate {
    pub fn new() -> Gate {
        let root = TestRoot::new();
        let base = Cgroup::new(&root.path);
        base.create().unwrap();
        let gate = base.child("g");
        gate.create().unwrap();
        let w = gate.child("w");
        w.create().unwrap();
        Gate { root, gate, w }
    }

    pub fn images(&self) -> PathBuf {
        // Under the test's private dir, on disk (not tmpfs), so a dump
        // really moves memory out.
        let d = std::env::var_os("GOV_TEST_IMAGES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp"))
            .join(format!(
                "gov-hibernate-{}",
                self.root.path.file_name().unwrap().to_string_lossy()
            ));
        d.join("g")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(parent) = self.images().parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// The host: starts `gov keeper -- CMD` in the gate's cgroup with piped
/// stdin and stdout, reads stdout lines on a thread.
pub struct Host {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub stdin: Option<std::process::ChildStdin>,
}

impl Host {
    pub fn start(gate: &Gate, cmd: &[&str]) -> Host {
        Host::start_as(gate, None, cmd)
    }

    /// As `start`, the keeper running as `user` (uid = gid) and with
    /// `--external`: it waits for the daemon to start its worker.
    pub fn start_as(gate: &Gate, user: Option<u32>, cmd: &[&str]) -> Host {
        let procs = gate.gate.path().join("cgroup.procs");
        let mut c = Command::new(common::gov_bin());
        c.arg("keeper").arg("--worker-cgroup").arg(gate.w.path());
        if user.is_some() {
            c.arg("--external");
        }
        c.arg("--")
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Into the gate before exec, as `gov spawn` puts the caller there.
        // Then the host's user, as a host's own process would be.
        unsafe {
            c.pre_exec(move || {
                std::fs::write(&procs, "0")?;
                if let Some(id) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = c.spawn().expect("gov keeper starts");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Host {
            child,
            lines: rx,
            stdin: Some(stdin),
        }
    }

    pub fn line(&self, within: Duration) -> String {
        self.lines
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no line from the worker within {within:?}: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host saw no exit: wait(2) with WNOHANG says it still runs.
    pub fn assert_running(&mut self, when: &str) {
        assert_eq!(
            self.child.try_wait().unwrap(),
            None,
            "{when}: the host saw its worker exit"
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ask_counter(sock: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(sock) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).unwrap();
                return text.trim().parse().expect("a number");
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reach the counter at {}: {e}", sock.display()),
        }
    }
}

pub fn mem_available_kb() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The private resident memory (RssAnon + RssShmem) of a cgroup's members.
pub fn rss_kb(cg: &Cgroup) -> u64 {
    cg.read_procs()
        .unwrap()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("RssAnon:").or(l.strip_prefix("RssShmem:")))
                .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum::<u64>()
}

pub fn wait_with_deadline(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the keeper did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The keeper with pid `pid`, as the daemon names it (pid and start time).
/// The gate's tags, with what a gate made by this test lacks of a real one.
pub fn tags(cg: &Cgroup) -> Tags {
    let mut m = cg.read_tags().unwrap();
    m.entry("project".into())
        .or_insert_with(|| "/hibernate-test".into());
    m.entry("owner_uid".into()).or_insert_with(|| "0".into());
    Tags::from_map(&m).unwrap()
}

/// The phase the gate's tags and frozen flag say, as a restarted daemon
/// reads it.
pub fn phase(cg: &Cgroup) -> Phase {
    let frozen = cg.read_cgroup_events().unwrap().frozen;
    record::phase_of(&tags(cg), frozen, gov::gate::now_ms())
}

/// The gate's record, as a daemon that finds it now has it.
pub fn record(cg: &Cgroup) -> Record {
    let frozen = cg.read_cgroup_events().unwrap().frozen;
    Record::found(Arc::new(cg.clone()), tags(cg), frozen, gov::gate::now_ms())
}

pub fn k(pid: u32) -> gov::keeper::Keeper {
    gov::keeper::Keeper::now(pid).expect("the keeper runs")
}
