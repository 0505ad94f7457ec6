//! A real daemon on a real socket: unprivileged clients, hostile requests,
//! policy errors and reloads, restarts and stops. Host tests: root and
//! cgroup2 required.
//!
//! No test here ever sends a spawn request from the test process itself: the
//! daemon would move the test runner into a gate. Raw spawns come from a
//! child process: this test binary re-run as `raw_client_child`.

use gov::protocol::EventKind;
use gov_testkit as kit;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kit::{
    alive, gov_as_nobody, root_rel, spawn_gate, text, wait_until, Daemon, Kid, TestRoot, NOBODY,
};
use nix::sys::signal::Signal;
use serde_json::Value;

fn nobody_run(root: &TestRoot, args: &[&str]) -> Output {
    kit::as_user(NOBODY, gov_as_nobody(root).args(args))
}

fn nobody_ps(root: &TestRoot) -> Vec<Value> {
    let out = nobody_run(root, &["ps", "--json"]);
    assert!(out.status.success(), "ps as nobody: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn proc_status(pid: u32, key: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// Resident memory of a process in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
        .and_then(|v| v.split_whitespace().next().map(str::to_string))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS of the daemon")
}

fn proc_cgroup(pid: u32) -> String {
    let t = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    gov::cgroup::parse_proc_cgroup(&t).unwrap_or("").to_string()
}

fn daemon_alive(d: &mut Daemon) -> bool {
    matches!(d.child.try_wait(), Ok(None))
}

/// One raw request line on a fresh connection; the first reply line, or
/// None when the daemon closed the connection without one.
fn raw(sock: &Path, bytes: &[u8]) -> Option<Value> {
    let s = UnixStream::connect(sock).expect("the daemon accepts");
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
    let _ = (&s).write_all(bytes);
    read_reply(&s)
}

fn read_reply(s: &UnixStream) -> Option<Value> {
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => {
            Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("the daemon sent a line that is not JSON ({e}): {line:?}")
            }))
        }
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("no reply and no close: {e}"),
    }
}

fn assert_error_reply(reply: Option<Value>, what: &str) -> Value {
    let v = reply.unwrap_or_else(|| panic!("{what}: dropped without an error reply"));
    assert_eq!(v["type"], "error", "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    v
}

/// The raw client's half, run in a child process: this same test binary,
/// re-run with only this test selected (`--ignored`) and GOV_RAW_SOCKET
/// set. It prints its cgroup before and after sending GOV_RAW_REQUEST (with
/// __SELF__ replaced by its own pid) and the daemon's reply. Ignored, so it
/// is never counted as a test that passed having checked nothing.
#[test]
#[ignore = "a helper: raw_client runs it in a child process"]
fn raw_client_child() {
    let socket =
        std::env::var_os("GOV_RAW_SOCKET").expect("run by raw_client, with GOV_RAW_SOCKET");
    let request = std::env::var("GOV_RAW_REQUEST").unwrap();
    let cg = || {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        gov::cgroup::parse_proc_cgroup(&text).unwrap().to_string()
    };
    let me = std::process::id();
    println!("self={me}");
    println!("before={}", cg());
    let reply =
        kit::Conn::connect(Path::new(&socket)).call(&request.replace("__SELF__", &me.to_string()));
    println!("reply={}", reply.trim());
    println!("after={}", cg());
}

/// A raw client in a child process (never the test runner itself, which
/// the daemon would move into a gate), as user `uid`.
fn raw_client(root: &TestRoot, uid: u32, request: &str) -> BTreeMap<String, String> {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "--ignored",
        "raw_client_child",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("GOV_RAW_SOCKET", &root.socket)
    .env("GOV_RAW_REQUEST", request)
    .env("HOME", "/")
    .current_dir("/");
    let out = kit::as_user(uid, &mut c);
    assert!(
        out.status.success(),
        "raw client failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------

/// nobody's gate runs as nobody, in the test root, tagged with nobody's uid.
/// nobody sees only it, and every action on root's gate fails and leaves
/// that gate exactly as it was. Root sees both.
#[test]
fn an_unprivileged_client_owns_its_gate_and_cannot_touch_roots() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let theirs = Kid::new(
        gov_as_nobody(&root)
            .args([
                "spawn",
                "-p",
                "/srv/nobody-proj",
                "-s",
                "nb-1",
                "--",
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mine = spawn_gate(
        root.gov(),
        "/srv/root-proj",
        Some("root-1"),
        "exec sleep 300",
    );
    let their_id = root.gate_of(theirs.id());
    let my_id = root.gate_of(mine.id());

    // The gate process is nobody's, and lives in its gate under the root.
    let uids = proc_status(theirs.id(), "Uid:").unwrap();
    assert!(
        uids.split_whitespace().all(|u| u == "65534"),
        "gate runs as nobody: {uids}"
    );
    let cg = proc_cgroup(theirs.id());
    assert!(cg.starts_with(&format!("{}/", root_rel(&root))), "{cg}");
    assert!(cg.ends_with(&format!("/{their_id}")), "{cg}");

    // Root sees both, with the right owners.
    wait_until(Duration::from_secs(5), "root to see both gates", || {
        root.ps_json().len() == 2
    });
    let g = root.gate_json(&their_id).unwrap();
    assert_eq!(g["uid"], NOBODY);
    assert_eq!(g["user"], "nobody");
    assert_eq!(g["session"], "nb-1");
    assert_eq!(root.gate_json(&my_id).unwrap()["uid"], 0);

    // nobody sees only their own.
    let listed = nobody_ps(&root);
    assert_eq!(listed.len(), 1, "nobody sees one gate: {listed:?}");
    assert_eq!(listed[0]["id"], their_id.as_str());

    // Every action on root's gate fails.
    let attempts: Vec<Vec<&str>> = vec![
        vec!["show", &my_id],
        vec!["touch", &my_id],
        vec!["touch", "--session", "root-1"],
        vec!["freeze", &my_id],
        vec!["thaw", &my_id],
        vec!["pin", &my_id],
        vec!["unpin", &my_id],
        vec!["tag", &my_id, "--session", "stolen"],
        vec!["kill", &my_id],
    ];
    // Nor learn of it through events or metrics.
    let out = nobody_run(&root, &["events", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains(&my_id),
        "nobody sees root's events"
    );
    let out = nobody_run(&root, &["metrics"]);
    assert!(
        !text(&out.stdout).contains("/srv/root-proj"),
        "metrics name root's project"
    );
    for args in &attempts {
        let out = nobody_run(&root, args);
        assert!(
            !out.status.success(),
            "nobody ran gov {args:?}: {}",
            text(&out.stdout)
        );
        let err = text(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "gov {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let g = root.gate_json(&my_id).expect("root's gate is still there");
    assert_eq!(g["state"], "running");
    assert_eq!(g["pinned"], false);
    assert_eq!(g["session"], "root-1");
    assert!(alive(mine.id()));
    assert!(
        !root
            .gate_cgroup(&my_id)
            .read_cgroup_events()
            .unwrap()
            .frozen
    );

    // Not even a thaw of root's frozen gate.
    root.ok(&["freeze", &my_id]);
    assert!(!nobody_run(&root, &["thaw", &my_id]).status.success());
    assert!(
        root.gate_cgroup(&my_id)
            .read_cgroup_events()
            .unwrap()
            .frozen,
        "still frozen"
    );
    root.ok(&["thaw", &my_id]);

    // nobody can act on their own gate.
    let out = nobody_run(&root, &["kill", &their_id]);
    assert!(
        out.status.success(),
        "nobody kills their own gate: {}",
        text(&out.stderr)
    );
    wait_until(Duration::from_secs(5), "nobody's gate to die", || {
        !alive(theirs.id())
    });
    assert!(alive(mine.id()));
    assert_eq!(root.ps_json().len(), 1);
    theirs.reap(Duration::from_secs(5));
}

/// The spawn request has no pid: whatever a client puts in it, the daemon
/// moves the connecting process and nothing else. A client may not name
/// another user's process as the gate's owner.
#[test]
fn a_spawn_moves_only_the_caller_whatever_the_request_names() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    // The victim: a root process that must stay where it is.
    let victim = Kid::new(Command::new("sleep").arg("300").spawn().unwrap());
    let victim_cg = proc_cgroup(victim.id());
    let rel = root_rel(&root);

    for uid in [0, NOBODY] {
        let req = format!(
            r#"{{"v":1,"type":"spawn","project":"/srv/raw","session":"raw-{uid}","pid":{v},"main_pid":{v},"uid":0,"owner_uid":0}}"#,
            v = victim.id()
        );
        let f = raw_client(&root, uid, &req);
        let reply: Value = serde_json::from_str(&f["reply"]).unwrap();
        assert_eq!(
            proc_cgroup(victim.id()),
            victim_cg,
            "uid {uid}: the named pid was moved"
        );
        match reply["type"].as_str() {
            Some("spawned") => {
                let gate = reply["gate"].as_str().unwrap();
                assert!(
                    f["after"].starts_with(&format!("{rel}/")) && f["after"].ends_with(gate),
                    "uid {uid}: the caller itself is moved into {gate}: {f:?}"
                );
                // The gate is the caller's, whatever the request said.
                let events = root.events();
                let ev = events
                    .iter()
                    .find(|e| e.gate == gate && e.kind == EventKind::Spawned)
                    .unwrap_or_else(|| panic!("no spawned event for {gate}: {events:?}"));
                assert_eq!(ev.uid, uid, "owner uid comes from peer credentials");
            }
            Some("error") => assert_eq!(f["after"], f["before"], "refused, so not moved"),
            _ => panic!("uid {uid}: unexpected reply {reply}"),
        }
    }

    // Owner: someone else's process is refused for nobody, through the CLI
    // and raw; their own process is fine.
    let out = nobody_run(
        &root,
        &[
            "spawn",
            "-p",
            "/srv/owner",
            "--owner",
            &victim.id().to_string(),
            "--",
            "true",
        ],
    );
    assert!(
        !out.status.success(),
        "nobody named root's process as owner"
    );
    let err = text(&out.stderr);
    assert!(err.contains("not yours"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let req = format!(
        r#"{{"type":"spawn","project":"/srv/owner","owner_pid":{}}}"#,
        victim.id()
    );
    let f = raw_client(&root, NOBODY, &req);
    let reply: Value = serde_json::from_str(&f["reply"]).unwrap();
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert_eq!(f["after"], f["before"], "a refused spawn moves nobody");

    let f = raw_client(
        &root,
        NOBODY,
        r#"{"type":"spawn","project":"/srv/owner","owner_pid":__SELF__}"#,
    );
    let reply: Value = serde_json::from_str(&f["reply"]).unwrap();
    assert_eq!(
        reply["type"], "spawned",
        "nobody may own a gate by their own process: {reply}"
    );
    assert!(nobody_ps(&root)
        .iter()
        .all(|g| g["owner_pid"] != victim.id()));
    assert!(alive(victim.id()));
}

/// Garbage, unknown requests, a 10 MB line, a silent client and 1,000
/// connections at once: each gets an error reply or is dropped, the daemon
/// keeps serving, and its memory stays bounded.
#[test]
fn malformed_and_abusive_clients_get_errors_and_the_daemon_keeps_serving() {
    let root = TestRoot::new();
    let mut d = root.daemon("");
    let sock = root.socket.clone();
    root.ok(&["ps"]);
    let rss_before = vm_rss_kib(d.pid());

    // A client that connects and never writes is dropped after the
    // first-request timeout (5 s). Runs alongside the rest.
    // Connected here, before the flood below, so it holds a slot of its own.
    let silent = {
        let mut s = UnixStream::connect(&sock).unwrap();
        let t = Instant::now();
        std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
            let mut buf = [0u8; 256];
            let r = s.read(&mut buf);
            (t.elapsed(), r.map_err(|e| e.kind()))
        })
    };

    let nested = "[".repeat(60_000) + "\n";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"type\":\n".to_vec()),
        ("not JSON", b"hello daemon\n".to_vec()),
        ("an empty line", b"\n".to_vec()),
        ("JSON null", b"null\n".to_vec()),
        ("an unknown type", b"{\"type\":\"reboot\"}\n".to_vec()),
        ("no type", b"{\"gate\":\"g0123456789\"}\n".to_vec()),
        ("a missing field", b"{\"type\":\"kill\"}\n".to_vec()),
        (
            "a wrong field type",
            b"{\"type\":\"kill\",\"gate\":5}\n".to_vec(),
        ),
        (
            "a path as gate id",
            b"{\"type\":\"kill\",\"gate\":\"../../etc\"}\n".to_vec(),
        ),
        ("another version", b"{\"v\":2,\"type\":\"list\"}\n".to_vec()),
        (
            "a huge version",
            b"{\"v\":99999999999999,\"type\":\"list\"}\n".to_vec(),
        ),
        ("invalid UTF-8", b"\xff\xfe{\n".to_vec()),
        ("deep nesting", nested.into_bytes()),
        (
            "a bad session",
            b"{\"type\":\"touch\",\"session\":\"../x\"}\n".to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        assert_error_reply(raw(&sock, bytes), what);
    }

    // An error does not end the conversation: a good request after a bad one
    // on the same connection is served.
    {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(b"garbage\n{\"type\":\"list\"}\n").unwrap();
        let mut r = BufReader::new(&s);
        let mut l1 = String::new();
        let mut l2 = String::new();
        r.read_line(&mut l1).unwrap();
        r.read_line(&mut l2).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&l1).unwrap()["type"],
            "error",
            "{l1}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&l2).unwrap()["type"],
            "gates",
            "{l2}"
        );
    }

    // A 10 MB line: refused (too_large) or dropped, never buffered whole.
    {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
        let w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut big = vec![b'x'; 10 << 20];
            big.extend_from_slice(b"\n");
            (&w).write_all(&big).map_err(|e| e.kind())
        });
        match read_reply(&s) {
            Some(v) => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["code"], "too_large", "{v}");
            }
            None => eprintln!("10 MB line: dropped without a reply"),
        }
        drop(s);
        let wrote = writer.join().unwrap();
        assert!(wrote.is_err(), "the daemon read all 10 MB of one line");
    }

    // 1,000 connections at once. Those past the cap get `busy` and are
    // closed; the held ones keep their slot until the first-request timeout.
    let mut held: Vec<UnixStream> = (0..1000)
        .map(|i| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    for s in &held {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; held.len()];
    let mut busy = 0;
    wait_until(
        Duration::from_secs(3),
        "some connections to be answered busy",
        || {
            for (i, s) in held.iter_mut().enumerate() {
                if answered[i] {
                    continue;
                }
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => answered[i] = true,
                    Ok(n) => {
                        answered[i] = true;
                        let v: Value = serde_json::from_slice(&buf[..n]).expect("a JSON line");
                        assert_eq!(v["type"], "error", "{v}");
                        if v["code"] == "busy" {
                            busy += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => answered[i] = true,
                    Err(e) => panic!("{e}"),
                }
            }
            busy > 0
        },
    );
    eprintln!("1,000 connections: {busy} answered busy");
    // The cap holds: the daemon does not keep a descriptor per connection.
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    wait_until(
        Duration::from_secs(5),
        "the daemon to hold far fewer than 1,000 connections",
        || fds() < 600,
    );
    // Fresh clients meanwhile are served or told the daemon is busy; a few
    // of them, since whether the daemon's busy reply and close come before
    // or after the client's request is written is a race.
    let mut outcomes = BTreeMap::new();
    for _ in 0..20 {
        let out = root.run(&["ps", "--json"]);
        let err = text(&out.stderr);
        *outcomes
            .entry(if out.status.success() {
                "served".to_string()
            } else {
                err.trim().to_string()
            })
            .or_insert(0) += 1;
    }
    eprintln!("fresh ps while at the cap: {outcomes:?}");
    // (Checked at the end, so a failure there does not hide the rest.)
    drop(held);
    wait_until(Duration::from_secs(10), "the daemon to serve again", || {
        root.run(&["ps"]).status.success()
    });

    let (waited, r) = silent.join().unwrap();
    assert!(
        matches!(r, Ok(0) | Err(ErrorKind::ConnectionReset)),
        "silent client: {r:?}"
    );
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
        "silent client dropped after {waited:?}, wanted about 5 s"
    );

    assert!(
        daemon_alive(&mut d),
        "the daemon survived: {}",
        d.log_text()
    );
    root.ok(&["ps"]);
    // The daemon caps what clients can make it hold: 256 connections x
    // (8 KiB read buffer + 64 KiB line) is about 18 MiB worst case. 40 MiB
    // leaves room for allocator slack, never for a 10 MB line kept whole.
    let rss_after = vm_rss_kib(d.pid());
    eprintln!("daemon VmRSS {rss_before} KiB -> {rss_after} KiB");
    let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 40,
        "daemon RSS grew by {growth_mib} MiB ({rss_before} -> {rss_after} KiB)"
    );

    for err in outcomes.keys().filter(|k| *k != "served") {
        assert!(
            err.contains("connection limit") || err.contains("busy"),
            "a fresh client at the cap got neither service nor a busy reply: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// A typo in a key, a negative duration and a size like "4 gigs" are each
/// refused, naming the line and the key: by check-config, and by the daemon
/// at start (which exits non-zero without serving).
#[test]
fn bad_policies_are_refused_naming_line_and_key() {
    let root = TestRoot::new();
    // write_policy puts `socket` on line 1, `scan_interval` on line 2 and
    // relief's two keys on lines 3 and 4.
    let cases = [
        ("[defaults]\nidle_timout = \"5m\"\n", 6, "idle_timout"),
        ("[defaults]\nidle_timeout = \"-5m\"\n", 6, "idle_timeout"),
        ("[defaults]\nmemory_max = \"4 gigs\"\n", 6, "memory_max"),
        ("scan_intervall = \"1s\"\n", 5, "scan_intervall"),
        ("[defaults]\nstop_grace = \"5m\"\n\n[[project]]\npath = \"/srv/*\"\norphan_grace = -3\n", 10, "orphan_grace"),
    ];
    for (i, (extra, line, key)) in cases.iter().enumerate() {
        let file = root.dir.path().join(format!("bad-{i}.toml"));
        kit::write_policy(&file, &root.socket, extra);
        let where_ = format!("{}:{line}", file.display());

        let out = root.run(&["check-config", file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "check-config accepted {extra:?}");
        assert!(err.contains(&where_), "check-config names {where_}: {err}");
        assert!(err.contains(key), "check-config names key {key}: {err}");
        assert!(!err.contains("panicked"), "{err}");

        let mut daemon = root.gov();
        daemon.args(["daemon", "--config"]).arg(&file);
        let err = refused_start(daemon, extra);
        assert!(err.contains(&where_), "daemon names {where_}: {err}");
        assert!(err.contains(key), "daemon names key {key}: {err}");
        assert!(
            !root.socket.exists(),
            "the daemon bound its socket on a bad policy"
        );
    }
    // And a good file passes.
    let good = root.dir.path().join("good.toml");
    kit::write_policy(
        &good,
        &root.socket,
        "[defaults]\nidle_timeout = \"5m\"\nmemory_max = \"4G\"\n",
    );
    root.ok(&["check-config", good.to_str().unwrap()]);
}

/// `cmd`, a daemon that must refuse to start: its stderr, once it exited
/// non-zero (within a deadline: one that serves instead fails the test).
fn refused_start(mut cmd: Command, what: &str) -> String {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kid = Kid::new(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    // No event says a child exited: poll, bounded.
    let status = loop {
        if let Some(st) = kid.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the daemon started on {what:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    kid.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "daemon exit status on {what:?}");
    err
}

/// A policy file given (--config or GOV_CONFIG) that does not exist is an
/// error naming it, not a daemon on the embedded defaults: a typo must not
/// pass unseen. (Only the default /etc/gov.toml may be absent.)
#[test]
fn a_missing_config_given_is_refused_naming_it() {
    let root = TestRoot::new();
    let missing = root.dir.path().join("gov.tmol");
    let mut by_flag = root.gov();
    by_flag.args(["daemon", "--config"]).arg(&missing);
    let mut by_env = root.gov();
    by_env.arg("daemon").env("GOV_CONFIG", &missing);
    for (cmd, what) in [(by_flag, "--config"), (by_env, "GOV_CONFIG")] {
        let err = refused_start(cmd, what);
        assert!(
            err.contains(&missing.display().to_string()),
            "{what}: {err}"
        );
        assert!(err.contains("no such file"), "{what}: {err}");
        assert!(!root.socket.exists(), "{what}: the daemon bound its socket");
    }
}

/// SIGHUP with a bad file keeps the running policy (and says so); with a
/// good changed file the new policy applies. max_gates_per_user makes the
/// difference observable.
#[test]
fn sighup_keeps_the_old_policy_on_a_bad_file_and_applies_a_good_one() {
    let root = TestRoot::new();
    let d = root.daemon("");
    let a = spawn_gate(root.gov(), "/srv/hup", None, "exec sleep 300");
    root.gate_of(a.id());

    // The bad file would cap root at one gate, but must not apply.
    kit::write_policy(
        &d.config,
        &root.socket,
        "max_gates_per_user = 1\n[defaults]\nidle_timout = \"5m\"\n",
    );
    d.signal(Signal::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the log to say the old policy stays",
        || d.log_text().contains("not reloaded"),
    );
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("not reloaded")).unwrap();
    assert!(
        line.contains("idle_timout"),
        "the log names the key: {line}"
    );
    // Line 1 socket, 2 scan_interval, 3-4 relief, 5 max_gates_per_user,
    // 6 [defaults].
    assert!(
        line.contains(&format!("{}:7", d.config.display())),
        "and the line: {line}"
    );
    let b = spawn_gate(root.gov(), "/srv/hup", None, "exec sleep 300");
    root.gate_of(b.id());
    assert_eq!(
        root.ps_json().len(),
        2,
        "the old policy (no cap) still rules"
    );

    // A good file with a cap of 2: the third gate is refused.
    kit::write_policy(&d.config, &root.socket, "max_gates_per_user = 2\n");
    d.signal(Signal::SIGHUP);
    wait_until(
        Duration::from_secs(5),
        "the log to say policy reloaded",
        || d.log_text().contains("policy reloaded"),
    );
    let out = root.run(&["spawn", "-p", "/srv/hup", "--", "true"]);
    assert!(!out.status.success(), "the new cap applies");
    let err = text(&out.stderr);
    assert!(err.contains("max_gates_per_user"), "{err}");
    assert_eq!(root.ps_json().len(), 2);
    assert!(alive(a.id()) && alive(b.id()));
}

/// SIGKILL the daemon with gates running, start it again: every gate is
/// back with its tags, and none was touched.
#[test]
fn a_sigkilled_daemon_restarts_and_adopts_every_gate_untouched() {
    let root = TestRoot::new();
    let d = root.daemon("");
    let owner = Kid::new(Command::new("sleep").arg("300").spawn().unwrap());
    let a = spawn_gate(
        root.gov(),
        "/srv/restart",
        Some("rs-a"),
        "sleep 300 & exec sleep 300",
    );
    let b = Kid::new(
        root.gov()
            .args([
                "spawn",
                "-p",
                "/srv/restart-b",
                "-s",
                "rs-b",
                "--pin",
                "--owner",
            ])
            .arg(owner.id().to_string())
            .args(["--", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = Kid::new(
        gov_as_nobody(&root)
            .args([
                "spawn",
                "-p",
                "/srv/restart-c",
                "-s",
                "rs-c",
                "--",
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ids = [
        root.gate_of(a.id()),
        root.gate_of(b.id()),
        root.gate_of(c.id()),
    ];
    root.ok(&["freeze", &ids[2]]);
    wait_until(Duration::from_secs(5), "a's two processes", || {
        root.gate_json(&ids[0])
            .is_some_and(|g| g["pids"].as_array().unwrap().len() == 2)
    });
    let keep = [
        "id",
        "project",
        "session",
        "uid",
        "owner_pid",
        "main_pid",
        "pids",
        "pinned",
        "state",
        "created_ms",
    ];
    let snapshot = |gates: Vec<Value>| -> BTreeMap<String, BTreeMap<&str, Value>> {
        gates
            .into_iter()
            .map(|g| {
                let id = g["id"].as_str().unwrap().to_string();
                (id, keep.iter().map(|k| (*k, g[*k].clone())).collect())
            })
            .collect()
    };
    let before = snapshot(root.ps_json());
    assert_eq!(before.len(), 3);
    assert_eq!(before[&ids[1]]["owner_pid"], owner.id());
    assert_eq!(before[&ids[1]]["pinned"], true);
    assert_eq!(before[&ids[2]]["uid"], NOBODY);
    let pids: Vec<u32> = before
        .values()
        .flat_map(|g| {
            g["pids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(pids.len(), 4);

    let config = d.config.clone();
    d.sigkill();
    assert!(
        pids.iter().all(|&p| alive(p)),
        "a daemon's death kills no gate"
    );
    let d = Daemon::start_with(&root, &config);
    let mut after = BTreeMap::new();
    wait_until(Duration::from_secs(5), "every gate to be adopted", || {
        after = snapshot(root.ps_json());
        after.len() == 3
    });
    assert_eq!(after, before, "every gate is back with its tags and state");
    assert!(pids.iter().all(|&p| alive(p)), "a restart kills no gate");
    assert!(
        d.log_text().matches("adopted").count() >= 3,
        "{}",
        d.log_text()
    );
    assert!(
        root.gate_cgroup(&ids[2])
            .read_cgroup_events()
            .unwrap()
            .frozen,
        "still frozen"
    );
    assert_eq!(root.gate_json(&ids[0]).unwrap()["state"], "running");
}

/// A gate of the layout before project keys carried the uid
/// (`<slug>-<hash>`) is found by a new daemon and managed where it lies;
/// when it goes, its old project directory goes with it. A new gate of the
/// same project goes to the per-user key.
#[test]
fn a_gate_of_the_older_layout_is_managed_where_it_lies() {
    let root = TestRoot::new();
    let project = "/src/OldLayout";
    let old_key = "oldlayout-0123456789ab";
    assert!(gov::names::is_project_key(old_key));
    gov::cgroup::Cgroup::new(&root.path)
        .create_if_missing()
        .unwrap();
    let old_project = gov::cgroup::Cgroup::new(root.path.join(old_key));
    old_project.create_if_missing().unwrap();
    let (id, gate) = ("g0123456789", old_project.child("g0123456789"));
    gate.create().unwrap();
    let sleeper = Kid::new(Command::new("sleep").arg("300").spawn().unwrap());
    let pid = sleeper.id();
    gov::gate::Tags {
        project: project.into(),
        session: "old-1".into(),
        main_pid: Some(pid),
        main_start: gov::proc::start_time(pid),
        created_ms: gov::gate::now_ms(),
        ..Default::default()
    }
    .write(&gate)
    .unwrap();
    gate.write_procs(pid).unwrap();

    let _d = root.daemon("");
    wait_until(Duration::from_secs(10), "the old gate managed", || {
        root.gate_json(id).is_some_and(|g| g["project"] == project)
    });
    let new = Kid::new(root.spawn_sh(project, "sleep 300 & wait"));
    let new_id = root.gate_of(new.id());
    let new_project = kit::cgroup_parent(&root.gate_cgroup(&new_id));
    assert_eq!(
        new_project.path(),
        root.path.join(gov::names::project_key(0, project))
    );
    root.ok(&["kill", id]);
    wait_until(Duration::from_secs(10), "the old project removed", || {
        !old_project.exists()
    });
    assert!(!alive(pid));
    root.ok(&["kill", &new_id]);
    new.reap(Duration::from_secs(5));
    sleeper.reap(Duration::from_secs(5));
}

/// SIGTERM stops the daemon; its gates keep running, unfrozen, tagged, in
/// their cgroups, and root's direct ps still lists them. Its own leaf is gone.
#[test]
fn sigterm_stops_the_daemon_and_leaves_gates_running() {
    let root = TestRoot::new();
    let mut d = root.daemon("");
    let a = spawn_gate(
        root.gov(),
        "/srv/term",
        Some("term-1"),
        "sleep 300 & exec sleep 300",
    );
    let id = root.gate_of(a.id());
    wait_until(Duration::from_secs(5), "both processes", || {
        root.gate_json(&id)
            .is_some_and(|g| g["pids"].as_array().unwrap().len() == 2)
    });
    let before = root.gate_json(&id).unwrap();

    d.signal(Signal::SIGTERM);
    let mut status = None;
    wait_until(Duration::from_secs(5), "the daemon to exit", || {
        status = d.child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "a clean stop");
    assert!(!root.socket.exists(), "the socket is removed");
    assert!(d.log_text().contains("gates keep running"));
    // The daemon went back where it came from and removed its leaf.
    assert!(
        !root.path.join("daemon").exists(),
        "an empty daemon leaf is left under {}",
        root.path.display()
    );

    for p in before["pids"].as_array().unwrap() {
        assert!(
            alive(p.as_u64().unwrap() as u32),
            "pid {p} survived the stop"
        );
    }
    let ev = root.gate_cgroup(&id).read_cgroup_events().unwrap();
    assert!(ev.populated && !ev.frozen, "{ev:?}");
    // No daemon now: root's direct ps reads the same gate off cgroupfs.
    let g = root.gate_json(&id).expect("listed without a daemon");
    for k in ["project", "session", "uid", "owner_pid", "pids", "state"] {
        assert_eq!(g[k], before[k], "{k}");
    }
}

/// Under systemd with DelegateSubgroup=daemon the daemon starts in its leaf,
/// which systemd made and keeps: a stop leaves it where it is.
#[test]
fn a_daemon_started_in_its_leaf_leaves_the_leaf_to_whoever_made_it() {
    let root = TestRoot::new();
    let leaf = root.path.join("daemon");
    fs::create_dir_all(&leaf).unwrap();
    let config = root.policy_file("");
    // As systemd starts it: already in <root>/daemon, cgroup_root "delegated".
    let child = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1\" && exec \"$2\" daemon --config \"$3\"",
        ])
        .arg("sh")
        .arg(leaf.join("cgroup.procs"))
        .arg(kit::gov_bin())
        .arg(&config)
        .env("GOV_CGROUP_ROOT", "delegated")
        .env("GOV_SOCKET", &root.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut kid = Kid::new(child);
    let pid = kid.id();
    wait_until(Duration::from_secs(10), "the daemon to listen", || {
        UnixStream::connect(&root.socket).is_ok()
    });
    assert_eq!(
        fs::read_to_string(leaf.join("cgroup.procs"))
            .unwrap()
            .trim(),
        pid.to_string(),
        "it runs in the leaf it was started in"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(5), "the daemon to exit", || {
        status = kid.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0), "a clean stop");
    assert!(leaf.exists(), "the leaf systemd made was removed");
}

/// Without CRIU, hibernation is off, and that is said where a person looks:
/// on the spawn's stderr, in `show` and `ps --json`, in `status`, and as a
/// warning in the daemon's log (GOV_CRIU names a CRIU that is not there).
#[test]
fn hibernation_off_is_said_at_spawn_show_status_and_in_the_log() {
    let root = TestRoot::new();
    let missing = root.dir.path().join("no-criu");
    let config = root.policy_file("[defaults]\nhibernate_after = \"1s\"\n");
    let d = Daemon::start_env(&root, &config, &[("GOV_CRIU", missing.to_str().unwrap())]);
    let log = d.log_text();
    let said = log.lines().find(|l| l.contains("hibernation is off"));
    assert!(said.is_some_and(|l| l.contains("WARN")), "{log}");

    let status = root.ok(&["status"]);
    assert!(status.contains("hibernation: off: "), "{status}");
    assert!(status.contains(missing.to_str().unwrap()), "{status}");

    let err_file = root.dir.path().join("spawn.err");
    let kid = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "-p", "/srv/hib-off", "--"])
            .args(["sh", "-c", "exec sleep 300"])
            .stdin(Stdio::null())
            .stderr(fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap(),
    );
    let id = root.gate_of(kid.id());
    // The gate exists once the daemon moved the client, a moment before
    // the client reads the reply and says it: wait for the words.
    wait_until(
        Duration::from_secs(10),
        "spawn to say hibernation is off",
        || fs::read_to_string(&err_file).is_ok_and(|s| s.contains("gov: hibernation is off")),
    );

    let g = root.gate_json(&id).unwrap();
    let why = g["hibernation_off"].as_str().unwrap_or_default();
    assert!(why.contains(missing.to_str().unwrap()), "{g}");
    let show = root.ok(&["show", &id]);
    assert!(show.contains("off in this daemon"), "{show}");

    // A gate not spawned to hibernate is not told about it.
    let plain = spawn_gate(root.gov(), "/srv/hib-off", None, "exec sleep 300");
    let plain_id = root.gate_of(plain.id());
    assert!(root
        .gate_json(&plain_id)
        .unwrap()
        .get("hibernation_off")
        .is_none());

    root.ok(&["kill", &id]);
    root.ok(&["kill", &plain_id]);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
    assert_eq!(plain.reap(Duration::from_secs(10)), None);
}

/// `gov tag` changes a gate's session; `gov touch --session` touches every
/// gate of that session and no other (a touch thaws a frozen gate, which
/// makes it visible).
#[test]
fn tag_changes_the_session_and_touch_by_session_reaches_all_its_gates() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let kids = [
        spawn_gate(root.gov(), "/srv/touch", Some("sess-s"), "exec sleep 300"),
        spawn_gate(root.gov(), "/srv/touch", Some("sess-s"), "exec sleep 300"),
        spawn_gate(root.gov(), "/srv/touch-2", Some("sess-t"), "exec sleep 300"),
        spawn_gate(root.gov(), "/srv/touch-2", Some("sess-t"), "exec sleep 300"),
    ];
    let ids: Vec<String> = kids.iter().map(|k| root.gate_of(k.id())).collect();
    wait_until(Duration::from_secs(5), "four gates", || {
        root.ps_json().len() == 4
    });

    root.ok(&["tag", &ids[3], "--session", "sess-s"]);
    assert_eq!(root.gate_json(&ids[3]).unwrap()["session"], "sess-s");
    assert_eq!(root.gate_json(&ids[2]).unwrap()["session"], "sess-t");
    let out = root.run(&["tag", &ids[2], "--session", "../x"]);
    assert!(!out.status.success(), "a session with .. is refused");
    assert_eq!(root.gate_json(&ids[2]).unwrap()["session"], "sess-t");

    let touches = || -> u64 {
        root.ok(&["metrics"])
            .lines()
            .find_map(|l| l.strip_prefix("gov_touches_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("gov_touches_total")
    };
    for id in &ids {
        root.ok(&["freeze", id]);
    }
    let t0 = touches();
    root.ok(&["touch", "--session", "sess-s"]);
    assert_eq!(touches() - t0, 3, "three gates carry session sess-s");
    for (i, id) in ids.iter().enumerate() {
        let frozen = root.gate_cgroup(id).read_cgroup_events().unwrap().frozen;
        assert_eq!(frozen, i == 2, "gate {i} frozen={frozen}");
        let state = root.gate_json(id).unwrap()["state"].clone();
        assert_eq!(state == "running", i != 2, "gate {i}: {state}");
    }
    let out = root.run(&["touch", "--session", "sess-none"]);
    assert!(
        !out.status.success(),
        "touching an unknown session is an error"
    );
    root.ok(&["thaw", &ids[2]]);
}

/// `gov freeze` through the daemon is a person's freeze: ps says "frozen"
/// (protocol::GateState: Frozen is asked by a person, Suspended is the
/// reaper's idle freeze), and thaw makes it running again.
#[test]
fn a_freeze_asked_by_a_person_shows_frozen_and_thaw_resumes() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let a = spawn_gate(root.gov(), "/srv/freeze", None, "exec sleep 300");
    let id = root.gate_of(a.id());
    root.ok(&["freeze", &id]);
    assert!(root.gate_cgroup(&id).read_cgroup_events().unwrap().frozen);
    assert_eq!(root.gate_json(&id).unwrap()["state"], "frozen");
    root.ok(&["thaw", &id]);
    assert!(!root.gate_cgroup(&id).read_cgroup_events().unwrap().frozen);
    assert_eq!(root.gate_json(&id).unwrap()["state"], "running");
    assert!(alive(a.id()));
}

/// A user cannot list gov's root or a project's directory (which projects
/// and gates exist, and whose), though a path through them still works: a
/// keeper reads its own gate's files.
#[test]
fn others_cannot_list_gov_s_cgroup_tree() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let a = spawn_gate(root.gov(), "/srv/secret", None, "exec sleep 300");
    let id = root.gate_of(a.id());
    let gate_dir = root.gate_cgroup(&id).path().to_path_buf();
    let project_dir = gate_dir.parent().unwrap().to_path_buf();
    for dir in [&root.path, &project_dir] {
        let out = kit::as_user(NOBODY, Command::new("ls").arg(dir));
        assert!(!out.status.success(), "nobody listed {}", dir.display());
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711, "{}", dir.display());
    }
    let out = kit::as_user(
        NOBODY,
        Command::new("cat").arg(gate_dir.join("cgroup.events")),
    );
    assert!(
        out.status.success(),
        "a known path still passes: {}",
        text(&out.stderr)
    );
}

/// One line of the metrics text, summed over its labels (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn metrics_as_root(root: &TestRoot) -> String {
    match gov::client::request(&root.socket, gov::protocol::Request::Metrics) {
        Ok(Some(gov::protocol::Response::Metrics { text })) => text,
        other => panic!("metrics: {other:?}"),
    }
}

/// A metrics request reads no memory file: the figures are the scan's,
/// measured off the daemon's thread and kept with the gate. Scans are an
/// hour apart here, so none happens while 60 requests (root's and
/// nobody's, several at once) are served, and the daemon's count of memory
/// reads must not move. (Before, each request read every gate's
/// memory.current or every process's smaps_rollup on the daemon's only
/// thread.)
#[test]
fn metrics_requests_read_no_memory_files() {
    let root = TestRoot::new();
    // Made before the daemon (root's direct spawn), so its first scan finds
    // them; the budget, far above what they hold, keeps that scan measuring.
    let kids: Vec<Kid> = (0..3)
        .map(|_| Kid::new(root.spawn_sh("/srv/mem", "sleep 300 & sleep 300 & wait")))
        .collect();
    for k in &kids {
        root.gate_of(k.id());
    }
    let _d = root.daemon("scan_interval = \"1h\"\nmemory_budget = \"1T\"\n");
    // A figure may be 0 (in the VM, memory.current of a gate whose pages
    // were charged before its controller was on): wait for the figures to
    // be there, not for their size.
    wait_until(Duration::from_secs(20), "the scan's memory figures", || {
        metrics_as_root(&root)
            .matches("gov_project_memory_bytes{")
            .count()
            == 1
    });
    let before = metrics_as_root(&root);
    let (reads, scans) = (metric(&before, "gov_memory_reads_total"), root.scans());
    assert!(reads > 0, "{before}");
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    metrics_as_root(&root);
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..10 {
                    assert!(nobody_run(&root, &["metrics"]).status.success());
                }
            });
        }
    });
    let after = metrics_as_root(&root);
    assert_eq!(root.scans(), scans, "no scan ran meanwhile");
    assert_eq!(
        metric(&after, "gov_memory_reads_total"),
        reads,
        "metrics requests read memory files"
    );
    assert_eq!(
        metric(&after, "gov_project_memory_bytes"),
        metric(&before, "gov_project_memory_bytes")
    );
    assert!(after.contains("gov_memory_age_seconds "), "{after}");
}

/// The event history is kept per user: root's thousand-odd pins and unpins
/// push out root's own older events, never nobody's spawn.
#[test]
fn one_users_flood_of_events_keeps_anothers_history() {
    let root = TestRoot::new();
    let _d = root.daemon("event_history = 100\n");
    let theirs = Kid::new(
        gov_as_nobody(&root)
            .args(["spawn", "--project", "/srv/theirs", "--", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let their_id = root.gate_of(theirs.id());
    let mine = spawn_gate(root.gov(), "/srv/mine", None, "exec sleep 300");
    let my_id = root.gate_of(mine.id());
    let spawned = |events: &[Value]| {
        events
            .iter()
            .any(|e| e["gate"] == their_id.as_str() && e["kind"] == "spawned")
    };
    wait_until(Duration::from_secs(5), "nobody's spawn event", || {
        spawned(&root.events_json())
    });
    for i in 0..300 {
        let req = if i % 2 == 0 {
            gov::protocol::Request::Pin {
                gate: my_id.clone(),
            }
        } else {
            gov::protocol::Request::Unpin {
                gate: my_id.clone(),
            }
        };
        match gov::client::request(&root.socket, req) {
            Ok(Some(gov::protocol::Response::Done { .. })) => {}
            other => panic!("pin/unpin: {other:?}"),
        }
    }
    let all = root.events_json();
    assert_eq!(all.len(), 100, "the history holds event_history events");
    assert!(spawned(&all), "root sees nobody's spawn in the merge");
    let out = nobody_run(&root, &["events", "--json", "-n", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let theirs_seen: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        spawned(&theirs_seen),
        "nobody's spawn survived: {theirs_seen:?}"
    );
    let times: Vec<u64> = all.iter().map(|e| e["time_ms"].as_u64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "merged in time order"
    );
}

/// A user with no gates sees none of root's spawns, touches and reaps in
/// metrics; root sees them all.
#[test]
fn a_user_with_no_gates_sees_no_counts_in_metrics() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let a = spawn_gate(root.gov(), "/srv/secret", None, "exec sleep 300");
    let id = root.gate_of(a.id());
    root.ok(&["touch", &id]);
    root.ok(&["kill", &id]);
    let all = metrics_as_root(&root);
    assert!(metric(&all, "gov_spawns_total") >= 1, "{all}");
    assert!(metric(&all, "gov_touches_total") >= 1, "{all}");
    assert!(metric(&all, "gov_reaps_total") >= 1, "{all}");
    let out = nobody_run(&root, &["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let theirs = text(&out.stdout);
    for name in [
        "gov_spawns_total",
        "gov_touches_total",
        "gov_reaps_total",
        "gov_gates",
        "gov_memory_reads_total",
    ] {
        assert_eq!(metric(&theirs, name), 0, "{name} shown to nobody: {theirs}");
    }
}
