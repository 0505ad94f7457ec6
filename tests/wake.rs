//! Wake on input, against the real kernel and a real daemon: a gate the
//! reaper suspended comes back when its host writes to it, with no `gov
//! touch`, nothing lost and nothing read twice.

use gov_testkit as kit;

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use gov::protocol::{Event, EventKind};
use kit::{Daemon, Kid, TestRoot};

/// Short timers: suspended 2 s after the last activity (time for Python to
/// start and say where it listens), suspended again 150 ms after a wake. Never busy: a worker hashing its input under load
/// must not count as active, or it would never sleep.
const FAST: &str = "scan_interval = \"100ms\"\n[defaults]\nidle_timeout = \"2s\"\nwake_quiet = \"150ms\"\nbusy_cpu_percent = 100.0\nfrozen_hold = \"1h\"\norphan_grace = \"never\"\n";

/// A daemon whose log is printed if the test fails.
struct Logged(Daemon);

impl Drop for Logged {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- the daemon's log ----\n{}", self.0.log_text());
        }
    }
}

/// Waits until gate `id` has been suspended `n` times (its `suspended`
/// events): a suspension after the last wake, as the owner records it
/// before it publishes the state (which a test could still read as the
/// state before the wake). Its watch is armed right after; input written
/// from then on wakes it, before or after the arming.
fn wait_sleeps(root: &TestRoot, gate: &str, n: usize) {
    wait_events(root, gate, EventKind::Suspended, n);
}

/// Waits until gate `id` has `n` events of `kind`.
fn wait_events(root: &TestRoot, gate: &str, kind: EventKind, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_of(root, gate, kind).len() < n {
        assert!(
            Instant::now() < deadline,
            "gate {gate} has not {n} {kind:?} events within 60 s: {:?}",
            root.events()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn state(root: &TestRoot, gate: &str) -> Option<String> {
    root.gate(gate).map(|g| g.state.as_str().to_string())
}

fn events_of(root: &TestRoot, gate: &str, kind: EventKind) -> Vec<Event> {
    root.events()
        .into_iter()
        .filter(|e| e.gate == gate && e.kind == kind)
        .collect()
}

fn wait_state(root: &TestRoot, gate: &str, want: &str) {
    // Long enough for a dump on a loaded machine (the whole suite at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(root, gate).as_deref() != Some(want) {
        if Instant::now() > deadline {
            let show = root.run(&["show", gate]);
            let events = root.run(&["events"]);
            panic!(
                "gate {gate} not {want} within 60 s:\n{}{}\n{}",
                kit::text(&show.stdout),
                kit::text(&show.stderr),
                kit::text(&events.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `gov spawn -- python3 -c PROGRAM` with pipes for stdin and stdout, as a
/// host starts its worker.
fn spawn_python(root: &TestRoot, project: &str, program: &str) -> Kid {
    Kid::new(
        root.gov()
            .args([
                "spawn",
                "--project",
                project,
                "--",
                "python3",
                "-u",
                "-c",
                program,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gov spawn starts"),
    )
}

/// A worker that answers each line with "got LINE".
const ECHO: &str =
    "import sys\nfor line in sys.stdin:\n    print('got ' + line.strip(), flush=True)\n";

fn python_or_skip(test: &str) -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import hashlib")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("GOV_REQUIRE_PYTHON").is_none(),
            "{test}: GOV_REQUIRE_PYTHON=1 but python3 is missing"
        );
        kit::skip(test, "no python3 here");
    }
    ok
}

fn next_line(lines: &Receiver<String>, what: &str) -> String {
    lines
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no {what} within 20 s"))
}

/// A line written to a suspended gate's stdin is answered, with no touch;
/// `gov show` named what would wake it; the wake is an event and a metric;
/// with nothing else to do the gate is suspended again.
#[test]
fn a_line_to_a_suspended_gate_is_answered_without_a_touch() {
    if !python_or_skip("a_line_to_a_suspended_gate_is_answered_without_a_touch") {
        return;
    }
    let root = TestRoot::new();
    let config = root.policy_file(FAST);
    let _d = Logged(Daemon::start_env(
        &root,
        &config,
        &[("GOV_LOG", "gov=debug")],
    ));
    let mut host = spawn_python(&root, "/srv/wake-line", ECHO);
    let id = root.gate_of(host.id());
    let lines = kit::lines_of(&mut host);
    let mut stdin = host.stdin.take().unwrap();
    writeln!(stdin, "one").unwrap();
    assert_eq!(next_line(&lines, "first reply"), "got one");
    wait_state(&root, &id, "suspended");
    let show = root.ok(&["show", &id]);
    assert!(
        show.contains("wakes on") && show.contains("stdin pipe"),
        "{show}"
    );
    for (i, n) in ["two", "three"].into_iter().enumerate() {
        wait_sleeps(&root, &id, i + 1);
        writeln!(stdin, "{n}").unwrap();
        assert_eq!(
            next_line(&lines, "a reply from the suspended gate"),
            format!("got {n}")
        );
    }
    let woken = events_of(&root, &id, EventKind::Woken);
    assert!(woken.len() >= 2, "{woken:?}");
    assert!(
        woken
            .iter()
            .all(|e| e.reason.as_deref() == Some("stdin pipe")),
        "{woken:?}"
    );
    // Input is not activity: it sleeps again, and the metric counts.
    wait_state(&root, &id, "suspended");
    let metrics = root.ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gov_wakes_total{kind=\"stdin\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(stdin);
    assert_eq!(host.reap(Duration::from_secs(20)), Some(0));
}

/// Input that arrives while the reaper's freeze is in flight (cgroup.freeze
/// already 1, the daemon still waiting for the kernel, held open 400 ms by
/// GOV_TEST_FAULT) wakes the gate as soon as it is frozen: answered, never
/// left frozen with input waiting.
#[test]
fn input_during_an_in_flight_freeze_is_answered() {
    if !python_or_skip("input_during_an_in_flight_freeze_is_answered") {
        return;
    }
    let root = TestRoot::new();
    let config = root.policy_file(FAST);
    let _d = Logged(Daemon::start_env(
        &root,
        &config,
        &[("GOV_TEST_FAULT", "freeze=sleep:400"), ("GOV_LOG", "debug")],
    ));
    let mut host = spawn_python(&root, "/srv/wake-race", ECHO);
    let id = root.gate_of(host.id());
    let cg = root.gate_cgroup(&id);
    let lines = kit::lines_of(&mut host);
    let mut stdin = host.stdin.take().unwrap();
    for round in 1..=3 {
        // The freeze begins: cgroup.freeze turns 1.
        let deadline = Instant::now() + Duration::from_secs(30);
        while cg.read_file("cgroup.freeze").unwrap().trim() != "1" {
            assert!(Instant::now() < deadline, "round {round}: no freeze began");
            std::thread::sleep(Duration::from_millis(2));
        }
        writeln!(stdin, "r{round}").unwrap();
        assert_eq!(next_line(&lines, "the reply"), format!("got r{round}"));
    }
    drop(stdin);
    assert_eq!(host.reap(Duration::from_secs(20)), Some(0));
}

/// A worker that hashes all it reads from `source` ("stdin", "unix PATH",
/// "tcp") and prints the digest and the count at the end of its input.
fn hasher(source: &str) -> String {
    format!(
        r#"
import hashlib, os, socket, sys
src = {source:?}
h = hashlib.sha256(); n = 0
if src == "stdin":
    f = sys.stdin.buffer.raw
    read = lambda: f.read(65536)
else:
    if src == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0))
        where = str(s.getsockname()[1])
    else:
        where = src.split(" ", 1)[1]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(where)
    s.listen(1)
    print("listening " + where, flush=True)
    c, _ = s.accept()
    read = lambda: c.recv(65536)
while True:
    b = read()
    if not b:
        break
    h.update(b); n += len(b)
print(h.hexdigest() + " " + str(n), flush=True)
"#
    )
}

/// Thousands of writes of random sizes (1 byte to four pipe buffers) at
/// random moments, with pauses long enough for the gate to be suspended
/// again many times: what the worker read is exactly what was sent.
fn integrity(test: &str, source: &str) {
    if !python_or_skip(test) {
        return;
    }
    let root = TestRoot::new();
    let config = root.policy_file(FAST);
    let _d = Logged(Daemon::start_env(&root, &config, &[("GOV_LOG", "debug")]));
    let sock = root.socket.with_file_name("hash.sock");
    let source = match source {
        "unix" => format!("unix {}", sock.display()),
        s => s.to_string(),
    };
    let mut host = spawn_python(&root, "/srv/wake-integrity", &hasher(&source));
    let id = root.gate_of(host.id());
    let lines = kit::lines_of(&mut host);
    let stdin = host.stdin.take().unwrap();
    let mut out: Box<dyn Write> = match source.as_str() {
        "stdin" => Box::new(stdin),
        _ => {
            let said = next_line(&lines, "the listener");
            let at = said
                .strip_prefix("listening ")
                .expect("listening")
                .to_string();
            drop(stdin);
            if source == "tcp" {
                Box::new(
                    std::net::TcpStream::connect(("127.0.0.1", at.parse::<u16>().unwrap()))
                        .unwrap(),
                )
            } else {
                Box::new(std::os::unix::net::UnixStream::connect(&at).unwrap())
            }
        }
    };
    // A small xorshift: reproducible, no crate needed.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ source.len() as u64;
    let mut rand = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let mut digest = Sha256Stream::default();
    let writes = 3000;
    for i in 0..writes {
        let size = match rand(10) {
            0 => 1 + rand(4 * 65536),
            1..=3 => 1 + rand(8192),
            _ => 1 + rand(64),
        } as usize;
        let chunk: Vec<u8> = (0..size).map(|_| rand(256) as u8).collect();
        // Now and then, quiet long enough to be suspended again after this
        // write (counted before it: a suspension always follows a write).
        let pause = (i % 100 == 50).then(|| events_of(&root, &id, EventKind::Suspended).len());
        out.write_all(&chunk).unwrap();
        digest.update(&chunk);
        if let Some(before) = pause {
            wait_sleeps(&root, &id, before + 1);
        } else if rand(20) == 0 {
            std::thread::sleep(Duration::from_millis(rand(5)));
        }
    }
    drop(out);
    let said = next_line(&lines, "the worker's digest");
    assert_eq!(said, format!("{} {}", digest.hex(), digest.len), "{test}");
    let woken = events_of(&root, &id, EventKind::Woken).len();
    assert!(woken >= writes / 100, "{test}: woken only {woken} times");
    assert_eq!(host.reap(Duration::from_secs(20)), Some(0));
}

#[test]
fn what_a_sleeping_gate_reads_from_a_pipe_is_exactly_what_was_written() {
    integrity("what_a_sleeping_gate_reads_from_a_pipe", "stdin");
}

#[test]
fn what_a_sleeping_gate_reads_from_a_unix_connection_is_exactly_what_was_sent() {
    integrity("what_a_sleeping_gate_reads_from_a_unix_connection", "unix");
}

#[test]
fn what_a_sleeping_gate_reads_from_a_tcp_connection_is_exactly_what_was_sent() {
    integrity("what_a_sleeping_gate_reads_from_a_tcp_connection", "tcp");
}

/// SHA-256 through `sha256sum`, fed as we go: the test's own count of what
/// it sent, computed by a program other than the worker's Python.
struct Sha256Stream {
    child: Child,
    stdin: Option<ChildStdin>,
    len: u64,
}

impl Default for Sha256Stream {
    fn default() -> Self {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum runs");
        let stdin = child.stdin.take();
        Sha256Stream {
            child,
            stdin,
            len: 0,
        }
    }
}

impl Sha256Stream {
    fn update(&mut self, b: &[u8]) {
        self.stdin.as_mut().unwrap().write_all(b).unwrap();
        self.len += b.len() as u64;
    }

    fn hex(&mut self) -> String {
        drop(self.stdin.take());
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = self.child.wait();
        out.split_whitespace().next().unwrap().to_string()
    }
}

/// A daemon that hibernates idle `--hibernate` gates at once.
fn hibernating_daemon(root: &TestRoot, criu: &gov::criu::Criu) -> Logged {
    let images = root.socket.with_file_name("images");
    let config = root.policy_file(&format!(
        "hibernate_dir = {:?}\n{}hibernate_after = \"0s\"\n",
        images.display().to_string(),
        FAST
    ));
    Logged(Daemon::start_env(
        root,
        &config,
        &[("GOV_CRIU", criu.path().to_str().unwrap())],
    ))
}

fn spawn_hibernatable(root: &TestRoot, project: &str, program: &str) -> Kid {
    Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "--project", project, "--"])
            .args(["python3", "-u", "-c", program])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("gov spawn starts"),
    )
}

/// Lines written to a hibernated gate restore it, and reach it once each,
/// in order: the keeper holds the pipe across the dump, and the worker
/// restored on the same pipe reads what waited there. Twice: a gate woken
/// by input sleeps again and is dumped again.
#[test]
fn lines_to_a_hibernated_gate_restore_it_and_arrive_once_in_order() {
    let test = "lines_to_a_hibernated_gate_restore_it_and_arrive_once_in_order";
    let Some(criu) = kit::criu::criu_or_skip(test) else {
        return;
    };
    if !python_or_skip(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = hibernating_daemon(&root, &criu);
    let mut host = spawn_hibernatable(&root, "/srv/wake-hibernated", ECHO);
    let id = root.gate_of(host.id());
    let lines = kit::lines_of(&mut host);
    let mut stdin = host.stdin.take().unwrap();
    for round in 1..=2 {
        // Dumped (again): the state alone could still be the last round's
        // (a dump taken back leaves it `suspended` on its way to the next).
        wait_events(&root, &id, EventKind::Hibernated, round);
        wait_state(&root, &id, "hibernated");
        let show = root.ok(&["show", &id]);
        assert!(show.contains("stdin pipe"), "round {round}: {show}");
        // Several lines at once, while it is on disk.
        let sent: Vec<String> = (1..=5).map(|i| format!("r{round}-{i}")).collect();
        stdin
            .write_all(format!("{}\n", sent.join("\n")).as_bytes())
            .unwrap();
        for s in &sent {
            assert_eq!(
                next_line(&lines, "a reply from the restored gate"),
                format!("got {s}")
            );
        }
        assert!(
            lines.recv_timeout(Duration::from_millis(300)).is_err(),
            "round {round}: a line answered twice"
        );
    }
    let restored = events_of(&root, &id, EventKind::Restored).len();
    let woken = events_of(&root, &id, EventKind::Woken).len();
    assert!(
        restored >= 2 && woken >= 2,
        "restored {restored}, woken {woken}"
    );
    drop(stdin);
    assert_eq!(host.reap(Duration::from_secs(30)), Some(0));
}

/// A `--hibernate` gate that listens on TCP is refused a dump (its host
/// would find nobody listening), says why, stays suspended, and a
/// connection wakes it.
#[test]
fn a_hibernatable_gate_with_a_tcp_listener_stays_suspended_and_wakes_on_a_connection() {
    let test = "a_hibernatable_gate_with_a_tcp_listener_stays_suspended_and_wakes_on_a_connection";
    let Some(criu) = kit::criu::criu_or_skip(test) else {
        return;
    };
    if !python_or_skip(test) {
        return;
    }
    let root = TestRoot::new();
    let _d = hibernating_daemon(&root, &criu);
    let server = "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8)\nprint(s.getsockname()[1], flush=True)\nwhile True:\n    c, _ = s.accept(); c.sendall(b'hello\\n'); c.close()\n";
    let mut host = spawn_hibernatable(&root, "/srv/wake-tcp", server);
    let id = root.gate_of(host.id());
    let lines = kit::lines_of(&mut host);
    let port: u16 = next_line(&lines, "the port").parse().unwrap();
    wait_state(&root, &id, "suspended");
    wait_until_show(&root, &id, "refused");
    let show = root.ok(&["show", &id]);
    assert!(
        show.contains("sockets") && show.contains("listener"),
        "{show}"
    );
    assert_eq!(state(&root, &id).as_deref(), Some("suspended"));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hello\n");
    assert!(events_of(&root, &id, EventKind::Woken)
        .iter()
        .any(|e| e.reason.as_deref().is_some_and(|r| r.contains("listener"))));
}

fn wait_until_show(root: &TestRoot, gate: &str, word: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.ok(&["show", gate]).contains(word) {
        assert!(Instant::now() < deadline, "gov show never said {word:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
