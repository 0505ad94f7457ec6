//! gov as root with no daemon: `gov spawn` creates and enters the gate
//! itself, and ps/show/kill/freeze/thaw act on cgroupfs directly. GOV_SOCKET
//! (set by TestRoot::gov) names a socket nobody listens on, so every command
//! here takes the direct path. Host tests: root and cgroup2 required.

use gov_testkit as kit;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gov::names;
use kit::{alive, gov_as_nobody, read_pids, root_rel, text, wait_until, Kid, TestRoot, NOBODY};

/// Runs a command to completion within `timeout` (its output is small, so
/// reading the pipes after the exit cannot deadlock).
fn output_within(cmd: &mut Command, timeout: Duration) -> (Output, u32) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("command starts");
    let pid = child.id();
    let mut kid = Kid::new(child);
    let deadline = Instant::now() + timeout;
    while kid.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let child = kid.into_inner();
    (child.wait_with_output().unwrap(), pid)
}

/// `key=value` lines a gate's script printed.
fn fields(stdout: &[u8]) -> BTreeMap<String, String> {
    text(stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A failure a person reads: exactly one line on stderr, no panic, no
/// backtrace.
fn assert_one_clear_line(out: &Output, what: &str) -> String {
    let err = text(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("backtrace") && !err.contains("RUST_BACKTRACE"),
        "{what}: stderr shows a panic or backtrace: {err}"
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: wanted exactly one line on stderr, got {err:?}"
    );
    assert_no_repeated_clause(&err, what);
    err
}

/// STYLE: print an error's source or chain it, not both. A cause printed
/// twice ("...: Broken pipe: Broken pipe") is a sign of both.
fn assert_no_repeated_clause(err: &str, what: &str) {
    let clauses: Vec<&str> = err.trim().split(": ").filter(|c| c.len() > 8).collect();
    for (i, c) in clauses.iter().enumerate() {
        assert!(
            !clauses[i + 1..].contains(c),
            "{what}: the message repeats {c:?}: {err}"
        );
    }
}

/// Every directory below `dir`, with its depth (1 = a direct child).
fn walk(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push((e.path(), depth));
            walk(&e.path(), depth + 1, out);
        }
    }
}

/// The root's tree has only `<project-key>/<gate-id>` directories in it.
fn assert_root_holds_only_gates(root: &TestRoot) {
    let mut dirs = Vec::new();
    walk(&root.path, 1, &mut dirs);
    for (d, depth) in dirs {
        let name = d.file_name().unwrap().to_str().unwrap().to_string();
        match depth {
            1 => assert!(
                names::is_project_key(&name),
                "{} is not a project key",
                d.display()
            ),
            2 => assert!(
                names::check_gate_id(&name).is_ok(),
                "{} is not a gate",
                d.display()
            ),
            _ => panic!("{} lies deeper than <root>/<project>/<gate>", d.display()),
        }
    }
}

/// No gate directory exists under the root (or the root was never made).
fn assert_no_gate_created(root: &TestRoot, what: &str) {
    assert!(
        root.gate_dirs().is_empty(),
        "{what}: a gate cgroup was created: {:?}",
        root.gate_dirs()
    );
}

// ---------------------------------------------------------------------------

/// The escape artist: the gate's main process starts a new session (setsid),
/// whose leader double-forks a grandchild that daemonises another process
/// with nohup; every one of them ignores SIGTERM. None of that gets out of
/// the gate: ps counts all of them and kill leaves nothing alive and no
/// cgroup behind.
#[test]
fn an_escaping_tree_that_ignores_sigterm_is_counted_and_killed_whole() {
    let root = TestRoot::new();
    let dir = root.dir.path();
    let pids = dir.join("escape.pids");
    let scripts = [
        // The gate's main process.
        (
            "gate.sh",
            "trap '' TERM\necho $$ >> \"$1\"\nsetsid sh \"$2/leader.sh\" \"$1\" \"$2\" </dev/null >/dev/null 2>&1 &\nexec sleep 1000\n",
        ),
        // A new session's leader; it reaps the middle of the double fork so no
        // zombie lingers in the count.
        (
            "leader.sh",
            "trap '' TERM\necho $$ >> \"$1\"\nsh \"$2/fork1.sh\" \"$1\" \"$2\" &\nwait $!\nexec sleep 1000\n",
        ),
        ("fork1.sh", "sh \"$2/grand.sh\" \"$1\" \"$2\" &\nexit 0\n"),
        (
            "grand.sh",
            "trap '' TERM\necho $$ >> \"$1\"\nnohup sh \"$2/daemon.sh\" \"$1\" >/dev/null 2>&1 &\nexec sleep 1000\n",
        ),
        ("daemon.sh", "trap '' TERM\necho $$ >> \"$1\"\nexec sleep 1000\n"),
    ];
    for (name, body) in scripts {
        fs::write(dir.join(name), body).unwrap();
    }
    let kid = Kid::new(
        root.gov()
            .args(["spawn", "--project", "/srv/escape", "--", "sh"])
            .arg(dir.join("gate.sh"))
            .arg(&pids)
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let main = kid.id();
    let id = root.gate_of(main);
    wait_until(
        Duration::from_secs(10),
        "all four processes to start",
        || read_pids(&pids).len() == 4,
    );
    let tree: BTreeSet<u32> = read_pids(&pids).into_iter().collect();
    assert!(
        tree.contains(&main),
        "the main process is the pid gov spawn had"
    );

    // The scenario is what it claims: all ignore SIGTERM, the setsid'd ones
    // are in another session, the double-forked ones are no descendants of
    // the main process any more.
    let status = |p: u32, key: &str| -> String {
        let s = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    for &p in &tree {
        let ign = u64::from_str_radix(&status(p, "SigIgn:"), 16).unwrap();
        assert!(
            ign & (1 << (libc::SIGTERM - 1)) != 0,
            "pid {p} does not ignore SIGTERM"
        );
    }
    let sid = |p: u32| nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(p as i32))).unwrap();
    let others: Vec<u32> = tree.iter().copied().filter(|&p| p != main).collect();
    assert!(
        others.iter().all(|&p| sid(p) != sid(main)),
        "setsid took effect"
    );
    let orphans = others
        .iter()
        .filter(|&&p| status(p, "PPid:").parse::<u32>().unwrap() != main)
        .filter(|&&p| !tree.contains(&status(p, "PPid:").parse::<u32>().unwrap()))
        .count();
    assert!(
        orphans >= 1,
        "the double fork left a process outside the main's family"
    );

    // ps counts every process of the tree, from cgroupfs.
    let mut listed = BTreeSet::new();
    wait_until(
        Duration::from_secs(5),
        "ps to list exactly the tree",
        || {
            listed = root
                .gate_json(&id)
                .map(|g| {
                    g["pids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_u64().unwrap() as u32)
                        .collect()
                })
                .unwrap_or_default();
            listed == tree
        },
    );
    assert_eq!(listed, tree);

    // SIGTERM does nothing here; gov kill takes all of them.
    root.ok(&["kill", &id]);
    for &p in &tree {
        wait_until(Duration::from_secs(5), &format!("pid {p} to die"), || {
            !alive(p)
        });
    }
    assert!(
        root.gate_dirs().is_empty(),
        "cgroup left: {:?}",
        root.gate_dirs()
    );
    assert!(
        root.gate_json(&id).is_none(),
        "ps still lists the killed gate"
    );
    assert_eq!(
        kid.reap(Duration::from_secs(5)),
        None,
        "killed by a signal, no exit code"
    );
}

/// gov spawn execs CMD in place: same pid, cwd and environment; the exit
/// status is CMD's; CMD learns its gate, project and session; and it runs in
/// <root>/<project-key>/<gate> before its first instruction.
#[test]
fn spawn_keeps_pid_cwd_env_and_exit_status_and_tells_the_gate() {
    let root = TestRoot::new();
    let cwd = root.dir.path().join("work dir");
    fs::create_dir(&cwd).unwrap();
    let script = r#"echo "pid=$$"; echo "cwd=$(pwd -P)"; echo "foo=$GOV_TEST_FOO"; echo "gate=$GOV_GATE"; echo "project=$GOV_PROJECT"; echo "session=$GOV_SESSION"; echo "cgroup=$(grep '^0::' /proc/$$/cgroup)"; exit 7"#;
    let (out, pid) = output_within(
        root.gov()
            .args([
                "spawn",
                "--project",
                ".",
                "--session",
                "sess-1",
                "--",
                "sh",
                "-c",
                script,
            ])
            .current_dir(&cwd)
            .env("GOV_TEST_FOO", "bar baz"),
        Duration::from_secs(10),
    );
    let f = fields(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit status of CMD; stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        f["pid"],
        pid.to_string(),
        "CMD runs as the pid gov spawn had"
    );
    let real_cwd = cwd.canonicalize().unwrap();
    assert_eq!(Path::new(&f["cwd"]), real_cwd, "cwd kept");
    assert_eq!(f["foo"], "bar baz", "environment passed through");
    names::check_gate_id(&f["gate"]).expect("GOV_GATE is a gate id");
    assert_eq!(
        Path::new(&f["project"]),
        real_cwd,
        "--project . is the absolute cwd"
    );
    assert_eq!(f["session"], "sess-1");
    assert_eq!(
        f["cgroup"],
        format!(
            "0::{}/{}/{}",
            root_rel(&root),
            names::project_key(0, &f["project"]),
            f["gate"]
        ),
        "CMD runs inside its gate"
    );
}

#[test]
fn spawn_without_a_session_generates_a_fresh_one() {
    let root = TestRoot::new();
    let mut seen = BTreeSet::new();
    for _ in 0..2 {
        let (out, _) = output_within(
            root.gov().args([
                "spawn",
                "-p",
                "/srv/gen",
                "--",
                "sh",
                "-c",
                "echo session=$GOV_SESSION",
            ]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let s = fields(&out.stdout)["session"].clone();
        assert!(!s.is_empty(), "GOV_SESSION set");
        names::check_session(&s).expect("a generated session is a valid one");
        seen.insert(s);
    }
    assert_eq!(seen.len(), 2, "each spawn gets its own session: {seen:?}");
}

#[test]
fn a_command_that_cannot_run_exits_127_or_126_with_one_line() {
    let root = TestRoot::new();
    let (out, _) = output_within(
        root.gov().args([
            "spawn",
            "-p",
            "/srv/missing",
            "--",
            "/nonexistent/gov-no-such-cmd",
            "x",
        ]),
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.code(),
        Some(127),
        "not found is 127, as in a shell"
    );
    let err = assert_one_clear_line(&out, "missing command");
    assert!(err.contains("gov-no-such-cmd"), "names the command: {err}");
    assert!(out.stdout.is_empty());

    let noexec = root.dir.path().join("not-executable");
    fs::write(&noexec, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).unwrap();
    let (out, _) = output_within(
        root.gov()
            .args(["spawn", "-p", "/srv/missing", "--"])
            .arg(&noexec),
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.code(),
        Some(126),
        "not executable is 126, as in a shell"
    );
    let err = assert_one_clear_line(&out, "non-executable command");
    assert!(err.contains("not-executable"), "names the command: {err}");
}

/// Freeze stops a CPU-burning gate dead (cpu.stat usage_usec stands still)
/// and thaw lets it run again.
#[test]
fn freeze_stops_a_burning_gate_and_thaw_resumes_it() {
    let root = TestRoot::new();
    let kid = Kid::new(root.spawn_sh("/srv/burn", "while :; do :; done"));
    let id = root.gate_of(kid.id());
    let cg = root.gate_cgroup(&id);
    let usage = || cg.read_cpu_usage_usec().unwrap();
    let u0 = usage();
    wait_until(Duration::from_secs(5), "the gate to burn CPU", || {
        usage() > u0 + 50_000
    });
    assert_eq!(root.gate_json(&id).unwrap()["state"], "running");

    root.ok(&["freeze", &id]);
    assert_eq!(root.gate_json(&id).unwrap()["state"], "frozen");
    assert!(
        cg.read_cgroup_events().unwrap().frozen,
        "cgroup.events says frozen"
    );
    let a = usage();
    std::thread::sleep(Duration::from_millis(400)); // a measuring interval, not a wait
    let b = usage();
    assert_eq!(a, b, "a frozen gate uses no CPU");
    assert!(alive(kid.id()), "frozen, not dead");

    root.ok(&["thaw", &id]);
    assert_eq!(root.gate_json(&id).unwrap()["state"], "running");
    assert!(!cg.read_cgroup_events().unwrap().frozen);
    wait_until(
        Duration::from_secs(5),
        "the thawed gate to burn CPU again",
        || usage() > b + 50_000,
    );
    root.ok(&["kill", &id]);
    assert_eq!(kid.reap(Duration::from_secs(5)), None);
}

/// A gate made by one `gov spawn` process is listed with its tags by a
/// `gov ps` in another process: cgroupfs (trusted.gov.* xattrs) is the
/// only memory there is without a daemon.
#[test]
fn tags_survive_the_process_that_wrote_them() {
    let root = TestRoot::new();
    let kid = Kid::new(
        root.gov()
            .args([
                "spawn",
                "-p",
                "/srv/tagged proj",
                "-s",
                "tags-1",
                "--",
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = kid.id();
    let id = root.gate_of(pid);
    let g = root.gate_json(&id).expect("a new gov ps lists the gate");
    assert_eq!(g["project"], "/srv/tagged proj");
    assert_eq!(g["session"], "tags-1");
    assert_eq!(g["uid"], 0);
    assert_eq!(g["user"], "root");
    assert_eq!(g["pids"], serde_json::json!([pid]));
    assert_eq!(g["main_pid"], pid, "main pid tagged");
    assert_eq!(
        g["owner_pid"],
        std::process::id(),
        "owner: the parent of gov spawn"
    );
    assert_eq!(g["state"], "running");
    // The same facts straight from the xattrs.
    let tags = gov::gate::Tags::read(&root.gate_cgroup(&id))
        .unwrap()
        .expect("tagged");
    assert_eq!(tags.project, "/srv/tagged proj");
    assert_eq!(tags.session, "tags-1");
    assert_eq!(tags.owner_uid, 0);
    assert_eq!(tags.main_pid, Some(pid));
    assert_eq!(tags.owner_pid, Some(std::process::id()));
    // And gov show, another new process, agrees.
    let shown: serde_json::Value =
        serde_json::from_str(&root.ok(&["show", &id, "--json"])).unwrap();
    assert_eq!(shown["project"], g["project"]);
    assert_eq!(shown["session"], g["session"]);
    assert_eq!(shown["pids"], g["pids"]);
    root.ok(&["kill", &id]);
    kid.reap(Duration::from_secs(5));
}

/// Projects: strings that cannot be a path component are either refused
/// (one line, exit != 0, no cgroup) or accepted as a hashed key strictly
/// under the root. Sessions with / or .. are always refused.
#[test]
fn hostile_project_and_session_names_never_reach_a_path() {
    let root = TestRoot::new();
    let long = "x".repeat(5000);
    let refused_projects = ["a\nb", "tab\there", "", long.as_str()];
    for p in refused_projects {
        let (out, _) = output_within(
            root.gov()
                .args(["spawn", "--project", p, "--", "true"])
                .current_dir(root.dir.path()),
            Duration::from_secs(10),
        );
        assert!(!out.status.success(), "project {p:?} accepted");
        assert_one_clear_line(&out, &format!("project {:?}", &p[..p.len().min(20)]));
        assert_no_gate_created(&root, &format!("project {:?}", &p[..p.len().min(20)]));
    }
    let long_session = "s".repeat(5000);
    let refused_sessions = [
        "a/b",
        "..",
        "../x",
        "../../etc",
        "/abs",
        "a\nb",
        long_session.as_str(),
    ];
    for s in refused_sessions {
        let (out, _) = output_within(
            root.gov()
                .args(["spawn", "-p", "/srv/ok", "--session", s, "--", "true"]),
            Duration::from_secs(10),
        );
        assert!(!out.status.success(), "session {s:?} accepted");
        assert_one_clear_line(&out, &format!("session {:?}", &s[..s.len().min(20)]));
        assert_no_gate_created(&root, &format!("session {:?}", &s[..s.len().min(20)]));
    }

    // Accepted: each lands in <root>/<project-key>/<gate>, nowhere else.
    let cwd = root.dir.path().canonicalize().unwrap();
    let depth = cwd.components().count();
    let up = "../".repeat(depth + 2) + "etc";
    let accepted: Vec<(String, String)> = vec![
        ("a/b".into(), "a/b".into()),
        ("..".into(), cwd.parent().unwrap().display().to_string()),
        (up.clone(), "/etc".into()),
        (
            "/tmp/../../etc/passwd".into(),
            "/tmp/../../etc/passwd".into(),
        ),
        ("a/../../../b".into(), "a/../../../b".into()),
        ("name with spaces".into(), "name with spaces".into()),
    ];
    for (given, expect) in &accepted {
        let (out, _) = output_within(
            root.gov()
                .args(["spawn", "--project", given, "--", "sh", "-c"])
                .arg(r#"echo "project=$GOV_PROJECT"; echo "gate=$GOV_GATE"; echo "cgroup=$(grep '^0::' /proc/$$/cgroup)""#)
                .current_dir(&cwd),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "project {given:?}: {}",
            text(&out.stderr)
        );
        let f = fields(&out.stdout);
        assert_eq!(&f["project"], expect, "project {given:?} as stored");
        let cg = f["cgroup"].strip_prefix("0::").unwrap().to_string();
        let want = format!(
            "{}/{}/{}",
            root_rel(&root),
            names::project_key(0, expect),
            f["gate"]
        );
        assert_eq!(cg, want, "project {given:?} lands strictly under the root");
        assert!(!cg.contains(".."), "{cg}");
    }
    assert_root_holds_only_gates(&root);
    assert_eq!(
        root.gate_dirs().len(),
        accepted.len(),
        "one gate per accepted spawn"
    );
}

/// Without a daemon, a user who is not root gets one clear line and exit 1:
/// no panic, no backtrace (even with RUST_BACKTRACE set), no cgroup.
#[test]
fn a_non_root_caller_without_a_daemon_gets_one_clear_line() {
    let root = TestRoot::new();
    let runs: [&[&str]; 4] = [
        &["ps"],
        &["ps", "--json"],
        &["spawn", "-p", "/srv/nobody", "--", "true"],
        &["kill", "g0123456789"],
    ];
    for args in runs {
        let out = kit::as_user(
            NOBODY,
            gov_as_nobody(&root)
                .args(args)
                .env("RUST_BACKTRACE", "1")
                .env("RUST_LIB_BACKTRACE", "1"),
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "gov {args:?} as nobody: {}",
            text(&out.stderr)
        );
        let err = assert_one_clear_line(&out, &format!("gov {args:?} as nobody"));
        assert!(err.contains("daemon"), "says the daemon is missing: {err}");
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout: {}",
            text(&out.stdout)
        );
    }
    assert_no_gate_created(&root, "nobody's spawn");
}

/// ps is a table with the documented columns; show lists the same facts;
/// an id that is not a gate id is an error, never a path.
#[test]
fn ps_and_show_say_what_people_need_and_bogus_ids_are_errors() {
    let root = TestRoot::new();
    assert_eq!(root.ok(&["ps"]).trim(), "no gates");
    let kid = Kid::new(
        root.gov()
            .args([
                "spawn",
                "-p",
                "/srv/table",
                "-s",
                "tbl-1",
                "--",
                "sleep",
                "300",
            ])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let id = root.gate_of(kid.id());

    let table = root.ok(&["ps"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["GATE", "PROJECT", "SESSION", "USER", "PIDS", "MEM", "CPU", "AGE", "IDLE", "STATE"]
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), header.len(), "one cell per column: {row:?}");
    assert_eq!(&row[..5], [id.as_str(), "/srv/table", "tbl-1", "root", "1"]);
    assert_eq!(row[9], "running");
    // Last, what gov holds: one running gate, its memory (a shell's, not 0).
    let summary = table.lines().last().unwrap();
    assert!(
        summary.starts_with("1 gate: ") && summary.ends_with(" running"),
        "{table}"
    );

    let show = root.ok(&["show", &id]);
    let value = |label: &str| -> String {
        show.lines()
            .find_map(|l| l.strip_prefix(label).filter(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("show has no {label:?} line:\n{show}"))
            .trim()
            .to_string()
    };
    assert_eq!(value("gate"), id);
    assert_eq!(value("project"), "/srv/table");
    assert_eq!(value("session"), "tbl-1");
    assert!(value("user").starts_with("root"));
    assert_eq!(value("pids"), format!("[{}]", kid.id()));
    for label in ["memory", "cpu", "age", "idle"] {
        assert!(!value(label).is_empty());
    }
    assert_eq!(value("state"), "running");

    let mount = gov::cgroup::cgroup2_mount().unwrap();
    for args in [
        ["show", "../../etc"],
        ["kill", "../../etc"],
        ["freeze", "../../etc"],
        ["thaw", "../../etc"],
        ["show", "/sys/fs/cgroup/unified"],
        ["kill", "g0123456789"],
        ["show", "g0123456789"],
    ] {
        let out = root.run(&args);
        assert!(!out.status.success(), "gov {args:?} succeeded");
        let err = assert_one_clear_line(&out, &format!("gov {args:?}"));
        assert!(
            !err.contains(&mount.display().to_string()) || args[1].starts_with('/'),
            "gov {args:?} reveals a path: {err}"
        );
        assert!(!err.contains("/etc/"), "gov {args:?} reveals a path: {err}");
        assert!(out.stdout.is_empty());
    }
    assert!(alive(kid.id()), "bogus ids touched nothing");
    root.ok(&["kill", &id]);
    kid.reap(Duration::from_secs(5));
}

/// A gov root that is not below the cgroup2 mount (elsewhere, the mount
/// itself, or climbing out with ..) is refused before anything is made, in
/// one plain line.
#[test]
fn a_cgroup_root_outside_cgroupfs_is_refused_in_one_plain_line() {
    let root = TestRoot::new();
    let mount = gov::cgroup::cgroup2_mount().unwrap();
    let elsewhere = root.dir.path().join("not-cgroupfs");
    let climbing = mount
        .join("..")
        .join(format!("gov-test-climb-{}", std::process::id()));
    // Only ps (which reads) where a wrong acceptance would touch cgroupfs.
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (elsewhere.clone(), vec!["ps"]),
        (
            elsewhere.clone(),
            vec!["spawn", "-p", "/srv/x", "--", "true"],
        ),
        (mount.clone(), vec!["ps"]),
        (climbing.clone(), vec!["ps"]),
    ];
    for (setting, args) in cases {
        let out = root
            .gov()
            .env("GOV_CGROUP_ROOT", &setting)
            .args(&args)
            .output()
            .unwrap();
        let what = format!("GOV_CGROUP_ROOT={} gov {args:?}", setting.display());
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stdout));
        let err = assert_one_clear_line(&out, &what);
        assert!(err.contains("cgroup2 mount"), "{what}: says why: {err}");
    }
    assert!(!elsewhere.exists(), "a directory was made outside cgroupfs");
    assert!(!climbing.exists());
}
