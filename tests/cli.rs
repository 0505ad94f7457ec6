//! The command line as a person meets it: README's first command and its stop
//! instruction, gates named by id prefix or session, `gov ps` filters, a
//! mistyped option before CMD, and packaging/install. Host tests: root and
//! cgroup2 required.

use gov_testkit as kit;

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kit::{alive, gov_bin, text, wait_until, Kid, TestRoot};
use serde_json::Value;

const README: &str = include_str!("../README.md");

fn fails(out: &Output, what: &str) -> String {
    assert!(
        !out.status.success(),
        "{what} should fail: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

fn ids(gates: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = gates
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The shortest prefix of `id` that no other id in `others` starts with.
fn unique_prefix(id: &str, others: &[&str]) -> String {
    (2..=id.len())
        .map(|n| &id[..n])
        .find(|p| others.iter().all(|o| !o.starts_with(p)))
        .expect("ids differ")
        .to_string()
}

// ---------------------------------------------------------------------------
// README's first run

/// README's first ```sh block.
fn readme_first_command() -> String {
    let start = README.find("```sh\n").expect("README has a sh block") + "```sh\n".len();
    let len = README[start..].find("```").unwrap();
    README[start..start + len].trim().to_string()
}

/// The code span in README's "Stop that daemon with `...`".
fn readme_stop_instruction() -> String {
    let flat = README.split_whitespace().collect::<Vec<_>>().join(" ");
    let marker = "Stop that daemon with `";
    let start = flat
        .find(marker)
        .expect("README says how to stop the daemon")
        + marker.len();
    let len = flat[start..].find('`').unwrap();
    flat[start..start + len].to_string()
}

/// The pid on the other end of a daemon's socket, as the kernel says.
fn daemon_pid_at(socket: &Path) -> u32 {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let s = UnixStream::connect(socket).expect("the daemon listens");
    getsockopt(&s, PeerCredentials).unwrap().pid() as u32
}

/// A daemon this test did not start as its child (README backgrounds it):
/// SIGKILLed on drop if it still runs, recognised by pid and start time.
struct Stray {
    pid: u32,
    start: Option<u64>,
}

impl Drop for Stray {
    fn drop(&mut self) {
        if alive(self.pid) && gov::proc::start_time(self.pid) == self.start {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// README's first command, run as written in a checkout of our own (the
/// build is skipped: `target/release/gov` is the gov under test), with a
/// private cgroup root, socket and policy through the environment; then its
/// stop instruction. Another daemon on another root and socket runs all the
/// while and must still answer afterwards: the instruction stops that one
/// daemon, not every gov on the host.
#[test]
fn readme_first_command_starts_a_gate_and_its_stop_instruction_stops_only_that_daemon() {
    let first = readme_first_command();
    let stop = readme_stop_instruction();
    assert!(!stop.contains("pidof") && !stop.contains("pkill"), "{stop}");

    let other = TestRoot::new();
    let other_daemon = other.daemon("");
    let root = TestRoot::new();
    let checkout = root.dir.path().join("checkout");
    fs::create_dir_all(checkout.join("target/release")).unwrap();
    std::os::unix::fs::symlink(gov_bin(), checkout.join("target/release/gov")).unwrap();
    let config = root.dir.path().join("gov.toml");
    kit::write_policy(&config, &root.socket, "");
    let env = |c: &mut Command| {
        c.current_dir(&checkout)
            .env("GOV_SOCKET", &root.socket)
            .env("GOV_CGROUP_ROOT", &root.path)
            .env("GOV_CONFIG", &config)
            .env_remove("GOV_LOG");
    };

    // Output to a file: the gate's child keeps the shell's stdout open.
    let out_path = root.dir.path().join("first-run.out");
    let out = fs::File::create(&out_path).unwrap();
    let mut sh = Command::new("sh");
    env(&mut sh);
    // `cargo build --release` is the one step not run: the binary is built.
    sh.arg("-c")
        .arg(format!("cargo() {{ :; }}\n{first}"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0);
    let shell = Kid::new(sh.spawn().expect("sh runs"));
    // The daemon outlives the shell; make sure it goes when the test does.
    let mut stray = None;
    wait_until(Duration::from_secs(20), "README's daemon to listen", || {
        if UnixStream::connect(&root.socket).is_ok() {
            let pid = daemon_pid_at(&root.socket);
            stray = Some(Stray {
                pid,
                start: gov::proc::start_time(pid),
            });
            true
        } else {
            false
        }
    });
    let stray = stray.unwrap();
    let code = shell.reap(Duration::from_secs(30));
    let output = fs::read_to_string(&out_path).unwrap();
    assert_eq!(code, Some(0), "README's first command failed:\n{output}");

    // One gate, of this checkout, listed by the gate's own `gov ps`.
    let gates = root.ps_json();
    assert_eq!(gates.len(), 1, "{gates:?}");
    let gate = gates[0]["id"].as_str().unwrap().to_string();
    assert_eq!(gates[0]["project"], checkout.to_str().unwrap());
    assert!(
        output.contains("GATE") && output.contains(&gate),
        "{output}"
    );
    let pids: Vec<u32> = serde_json::from_value(gates[0]["pids"].clone()).unwrap();
    assert!(!pids.is_empty(), "the background child stays in the gate");
    // The daemon's log is where README says, not among the commands' output.
    assert!(
        !output.contains("listening"),
        "the daemon logs into the terminal:\n{output}"
    );
    let log = fs::read_to_string(checkout.join("target/gov-daemon.log")).unwrap_or_default();
    assert!(log.contains("listening"), "the daemon's log: {log:?}");

    // The stop instruction, in a shell with README's PATH.
    let mut sh = Command::new("sh");
    env(&mut sh);
    let path = format!(
        "{}:{}",
        checkout.join("target/release").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let done = sh.arg("-c").arg(&stop).env("PATH", path).output().unwrap();
    assert!(done.status.success(), "{stop}: {}", text(&done.stderr));
    wait_until(Duration::from_secs(10), "README's daemon to stop", || {
        !alive(stray.pid)
    });

    // Only that daemon: the other one still runs and answers on its socket.
    assert!(alive(other_daemon.pid()));
    assert_eq!(
        other.ok(&["status", "--pid"]).trim(),
        other_daemon.pid().to_string()
    );
    assert_eq!(daemon_pid_at(&other.socket), other_daemon.pid());
    // And the stopped daemon's gate runs on (root sees it on cgroupfs).
    assert_eq!(ids(&root.ps_json()), [gate]);
    assert!(pids.iter().all(|&p| alive(p)));
    let st = root.run(&["status"]);
    assert_eq!(st.status.code(), Some(3), "no daemon: {}", text(&st.stdout));
}

#[test]
fn status_names_the_daemon_on_the_socket() {
    let root = TestRoot::new();
    let st = root.run(&["status", "--pid"]);
    assert_eq!(st.status.code(), Some(3));
    assert!(st.stdout.is_empty());
    assert!(text(&st.stderr).contains("no gov daemon answers"));
    let d = root.daemon("");
    assert_eq!(root.ok(&["status", "--pid"]).trim(), d.pid().to_string());
    let human = root.ok(&["status"]);
    assert!(human.contains(&format!("pid {}", d.pid())), "{human}");
    assert!(human.contains(root.socket.to_str().unwrap()), "{human}");
}

// ---------------------------------------------------------------------------
// Gates by what people know

/// A unique prefix works wherever a gate id does, through the daemon.
#[test]
fn a_unique_prefix_names_its_gate_in_every_command() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "p", Some("sa"));
    let (_b, b) = root.sleeping_gate(root.gov(), "p", Some("sb"));
    let pa = unique_prefix(&a, &[&b]);

    let shown: Value = serde_json::from_str(&root.ok(&["show", &pa, "--json"])).unwrap();
    assert_eq!(shown["id"], a.as_str());
    root.ok(&["touch", &pa]);
    root.ok(&["freeze", &pa]);
    assert_eq!(root.gate_json(&a).unwrap()["state"], "frozen");
    assert_eq!(root.gate_json(&b).unwrap()["state"], "running");
    root.ok(&["thaw", &pa]);
    assert_eq!(root.gate_json(&a).unwrap()["state"], "running");
    root.ok(&["pin", &pa]);
    assert_eq!(root.gate_json(&a).unwrap()["pinned"], true);
    assert_eq!(root.gate_json(&b).unwrap()["pinned"], false);
    root.ok(&["unpin", &pa]);
    assert_eq!(root.gate_json(&a).unwrap()["pinned"], false);
    root.ok(&["tag", &pa, "--session", "late"]);
    assert_eq!(root.gate_json(&a).unwrap()["session"], "late");
    assert_eq!(root.gate_json(&b).unwrap()["session"], "sb");
    root.ok(&["kill", &pa]);
    assert_eq!(ids(&root.ps_json()), [b]);
}

/// Root without a daemon resolves prefixes by walking the tree.
#[test]
fn a_unique_prefix_works_without_a_daemon() {
    let root = TestRoot::new();
    let (_a, a) = root.sleeping_gate(root.gov(), "p", Some("sa"));
    let (_b, b) = root.sleeping_gate(root.gov(), "p", Some("sb"));
    let pa = unique_prefix(&a, &[&b]);
    let shown: Value = serde_json::from_str(&root.ok(&["show", &pa, "--json"])).unwrap();
    assert_eq!(shown["id"], a.as_str());
    root.ok(&["freeze", &pa]);
    assert_eq!(root.gate_json(&a).unwrap()["state"], "frozen");
    root.ok(&["kill", &pa]);
    assert_eq!(ids(&root.ps_json()), [b]);
    // Sessions too.
    root.ok(&["kill", "sb"]);
    assert!(root.ps_json().is_empty());
}

/// "g" starts every gate id: with two gates it is ambiguous, the error
/// lists both, and nothing is done.
#[test]
fn an_ambiguous_prefix_lists_the_candidates_and_changes_nothing() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "p", None);
    let (_b, b) = root.sleeping_gate(root.gov(), "q", None);
    for cmd in ["kill", "freeze", "pin", "touch", "show"] {
        let err = fails(&root.run(&[cmd, "g"]), cmd);
        assert!(err.contains("ambiguous"), "{cmd}: {err}");
        assert!(err.contains(&a) && err.contains(&b), "{cmd}: {err}");
    }
    let gates = root.ps_json();
    assert_eq!(ids(&gates), {
        let mut v = vec![a, b];
        v.sort();
        v
    });
    for g in &gates {
        assert_eq!(g["state"], "running");
        assert_eq!(g["pinned"], false);
    }
}

#[test]
fn a_prefix_or_word_that_names_nothing_is_an_error() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "p", Some("s1"));
    // A prefix no gate has: a second character other than a's.
    let other = if a.as_bytes()[1] == b'0' { "g1" } else { "g0" };
    for cmd in ["kill", "show", "touch", "pin"] {
        let err = fails(&root.run(&[cmd, other]), cmd);
        assert!(
            err.contains("no gate of yours has an id starting with"),
            "{cmd}: {err}"
        );
    }
    // A full id (one request, no listing first): the daemon's answer
    // points to the list.
    let missing = format!("{other}{}", "0".repeat(11 - other.len()));
    for cmd in ["touch", "kill", "show"] {
        let err = fails(&root.run(&[cmd, &missing]), cmd);
        assert!(
            err.contains(&format!("no gate {missing} (`gov ps` lists yours)")),
            "{cmd}: {err}"
        );
    }
    let err = fails(&root.run(&["touch", "nosuch"]), "touch nosuch");
    assert!(
        err.contains("not a gate id") && err.contains("no session"),
        "{err}"
    );
    let err = fails(
        &root.run(&["kill", "--session", "nosuch"]),
        "kill --session",
    );
    assert!(err.contains("no gate of yours has session"), "{err}");
    assert_eq!(ids(&root.ps_json()), [a]);
}

/// A session where a gate was expected: touch, show, freeze, thaw and kill
/// take it for its gates; pin, which takes one gate, says to use --session.
#[test]
fn a_session_given_where_a_gate_was_expected() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "p", Some("3fa2c1d0"));
    let (_b, b) = root.sleeping_gate(root.gov(), "p", Some("other"));

    root.ok(&["touch", "3fa2c1d0"]);
    let shown: Value = serde_json::from_str(&root.ok(&["show", "3fa2c1d0", "--json"])).unwrap();
    assert_eq!(shown["id"], a.as_str());
    root.ok(&["freeze", "3fa2c1d0"]);
    assert_eq!(root.gate_json(&a).unwrap()["state"], "frozen");
    assert_eq!(root.gate_json(&b).unwrap()["state"], "running");
    root.ok(&["thaw", "3fa2c1d0"]);
    assert_eq!(root.gate_json(&a).unwrap()["state"], "running");

    let err = fails(&root.run(&["pin", "3fa2c1d0"]), "pin SESSION");
    assert!(
        err.contains("is a session") && err.contains("--session"),
        "{err}"
    );
    assert_eq!(root.gate_json(&a).unwrap()["pinned"], false);

    // A second gate in the session: show wants one, or --session for all.
    let (_c, c) = root.sleeping_gate(root.gov(), "q", Some("3fa2c1d0"));
    let err = fails(&root.run(&["show", "3fa2c1d0"]), "show SESSION of 2");
    assert!(err.contains("--session") && err.contains(&c), "{err}");
    let both: Vec<Value> =
        serde_json::from_str(&root.ok(&["show", "--session", "3fa2c1d0", "--json"])).unwrap();
    assert_eq!(ids(&both), {
        let mut v = vec![a.clone(), c.clone()];
        v.sort();
        v
    });
    // kill takes the session's every gate, and only those.
    root.ok(&["kill", "3fa2c1d0"]);
    assert_eq!(ids(&root.ps_json()), [b]);
}

#[test]
fn ps_filters_by_project_and_session() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "/src/one", Some("s1"));
    let (_b, b) = root.sleeping_gate(root.gov(), "/src/one", Some("s2"));
    let (_c, c) = root.sleeping_gate(root.gov(), "two", Some("s1"));
    let ps = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["ps", "--json"];
        all.extend_from_slice(args);
        ids(&serde_json::from_str::<Vec<Value>>(&root.ok(&all)).unwrap())
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ps(&["--project", "/src/one"]),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(ps(&["--session", "s1"]), sorted(vec![a.clone(), c.clone()]));
    assert_eq!(ps(&["--project", "two", "--session", "s1"]), [c]);
    assert!(ps(&["--project", "/src/one", "--session", "nosuch"]).is_empty());
    let table = root.ok(&["ps", "--project", "/src/one"]);
    assert!(
        table.contains(&a) && table.contains(&b) && !table.contains("two"),
        "{table}"
    );
}

// ---------------------------------------------------------------------------
// The command line refuses what it does not understand

/// `--sesion` before `--` is an error with a suggestion, not the command.
#[test]
fn a_mistyped_flag_before_dashdash_is_refused_and_runs_nothing() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let marker = root.dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = root.run(&[
        "spawn",
        "--project",
        "P",
        "--sesion",
        "S",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = text(&out.stderr);
    assert!(err.contains("unexpected argument '--sesion'"), "{err}");
    assert!(err.contains("'--session'"), "{err}");
    assert!(!marker.exists(), "the command ran");
    assert!(root.ps_json().is_empty(), "a gate was made");
    assert!(root.gate_dirs().is_empty());
}

// ---------------------------------------------------------------------------
// Installing without the package

#[test]
fn packaging_install_puts_gov_on_path_and_the_unit_points_at_it() {
    if kit::host_only("packaging_install", "bash, the source tree") {
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/install");
    let run = |args: &[&str]| {
        let out = Command::new(&script)
            .args(["--bin", gov_bin().to_str().unwrap()])
            .args(args)
            .env("DESTDIR", dest.path())
            .env("PREFIX", "/opt/gov")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let listed = run(&["--systemd", "--config"]);
    let bin = dest.path().join("opt/gov/bin/gov");
    assert!(listed.contains(bin.to_str().unwrap()), "{listed}");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(text(&v.stdout).starts_with("gov "), "{}", text(&v.stdout));
    let unit = fs::read_to_string(dest.path().join("etc/systemd/system/gov.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/opt/gov/bin/gov daemon\n"),
        "{unit}"
    );
    // An existing /etc/gov.toml is never overwritten.
    let conf = dest.path().join("etc/gov.toml");
    fs::write(&conf, "# mine\n").unwrap();
    run(&["--config"]);
    assert_eq!(fs::read_to_string(&conf).unwrap(), "# mine\n");
}

/// Resolving sees only the caller's gates: another user's prefix or session
/// names nothing, and says nothing about them.
#[test]
fn prefixes_and_sessions_name_only_the_callers_own_gates() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let (_a, a) = root.sleeping_gate(root.gov(), "p", Some("roots"));
    for word in [&a[..4], "roots"] {
        for cmd in ["show", "kill", "touch"] {
            let out = kit::as_user(kit::NOBODY, kit::gov_as_nobody(&root).args([cmd, word]));
            let err = fails(&out, &format!("nobody: gov {cmd} {word}"));
            assert!(err.contains("of yours"), "{cmd} {word}: {err}");
            assert!(!err.contains(&a), "{cmd} {word} names root's gate: {err}");
        }
    }
    assert_eq!(root.gate_json(&a).unwrap()["state"], "running");
}
