//! Hibernation as a stage of the daemon's lifecycle: `gov spawn
//! --hibernate`, idle, suspended, hibernated (CRIU), then a touch restores
//! it: real daemon, real CRIU, real cgroupfs. (tests/hibernate.rs tests the
//! steps themselves.)

use gov::protocol::{EventKind, MemorySource};
use gov_testkit as kit;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kit::{has_cap_sys_resource, lines_of, wait_until, Kid, TestRoot};

/// CRIU (kit::criu) and python3 for the worker, or a skip that says which
/// is missing (a failure under GOV_REQUIRE_CRIU).
fn criu_or_skip(test: &str) -> Option<PathBuf> {
    let criu = kit::criu::criu_or_skip(test)?;
    kit::criu::python3_or_skip(test)?;
    Some(criu.path().to_path_buf())
}

fn ask_counter(sock: &Path) -> u64 {
    let mut s = UnixStream::connect(sock).expect("the counter listens");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.trim().parse().expect("a number")
}

fn state(root: &TestRoot, id: &str) -> Option<String> {
    root.gate(id).map(|g| g.state.as_str().to_string())
}

/// The policy of these tests: hibernation on, one second idle and one
/// second suspended before a dump, never busy, never orphaned. Their
/// workers answer on a Unix socket, which the test asks while the gate
/// runs: with wake on input such a gate is refused a dump (its host would
/// lose the socket), so these tests of the dump itself turn it off, as a
/// project that wakes its gates by `gov touch` does (tests/wake.rs has the
/// gates that wake on input).
fn hibernating(images: &Path, idle: &str) -> String {
    format!(
        "hibernate_dir = {:?}\n[defaults]\nidle_timeout = \"{idle}\"\nfrozen_hold = \"1h\"\nhibernate_after = \"1s\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\nwake_on_input = false\n",
        images.display().to_string()
    )
}

/// CRIU for a daemon, named as a person names it: GOV_CRIU (over the
/// policy's criu_path), as integration/build-criu prints it.
fn criu_env(criu: &Path) -> [(&'static str, &str); 1] {
    [("GOV_CRIU", criu.to_str().unwrap())]
}

/// A daemon on `policy` that hibernates with `criu`.
fn daemon_with(root: &TestRoot, criu: &Path, policy: &str) -> kit::Daemon {
    kit::Daemon::start_env(root, &root.policy_file(policy), &criu_env(criu))
}

#[test]
fn an_idle_gate_is_hibernated_and_a_touch_brings_it_back_with_its_state() {
    let test = "an_idle_gate_is_hibernated_and_a_touch_brings_it_back_with_its_state";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let _d = daemon_with(&root, &criu, &hibernating(&images, "1s"));
    let sock = root.dir.path().join("counter.sock");
    let worker = kit::fixture("hibernate-worker.py");
    // The host: it started the gate, holds its stdout pipe and may wait on it.
    let mut host = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "--project", "/srv/repl", "--"])
            .arg("python3")
            .arg(&worker)
            .arg(&sock)
            .arg("200")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = host.id();
    let lines = lines_of(&mut host);
    let line = |within| lines.recv_timeout(within).expect("a line from the worker");
    assert!(line(Duration::from_secs(60)).starts_with("ready"));
    let id = root.gate_of(pid);
    assert_eq!(ask_counter(&sock), 1);
    assert_eq!(line(Duration::from_secs(10)), "count 1");

    // Idle: suspended, then hibernated; its worker's processes are gone.
    wait_until(Duration::from_secs(60), "the gate to hibernate", || {
        state(&root, &id).as_deref() == Some("hibernated")
    });
    let events = root.events();
    let hibernated = events
        .iter()
        .find(|e| e.gate == id.as_str() && e.kind == EventKind::Hibernated)
        .expect("a hibernated event");
    let image = hibernated.freed_bytes.unwrap();
    assert!(image >= 180 << 20, "image of {image} bytes for 200 MB");
    let shown = root.gate(&id).unwrap();
    assert_eq!(shown.memory_source, MemorySource::Image, "{shown:?}");
    assert_eq!(shown.memory_bytes, image);
    assert!(images.join(&id).exists(), "its image is on disk");
    // Counted as hibernated in metrics, and shown as disk, not RAM, by ps.
    let metrics = root.ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == "gov_gates{state=\"hibernated\"} 1"),
        "{metrics}"
    );
    let ps = root.ok(&["ps"]);
    let row = ps.lines().find(|l| l.starts_with(id.as_str())).unwrap();
    assert!(row.contains("M(disk) "), "{ps}");
    let w = root.gate_cgroup(&id).child("w");
    assert!(w.read_procs().unwrap().is_empty(), "the worker still runs");
    assert_eq!(
        root.gate(&id).unwrap().pids.len(),
        1,
        "only the keeper is left"
    );
    assert!(
        matches!(host.try_wait(), Ok(None)),
        "the host saw its worker exit"
    );

    // A touch restores it; the reply comes once it runs.
    let started = Instant::now();
    root.ok(&["touch", &id]);
    eprintln!("touch of a hibernated 200 MB gate: {:?}", started.elapsed());
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    assert_eq!(
        ask_counter(&sock),
        2,
        "the counter went on from where it was"
    );
    assert_eq!(line(Duration::from_secs(10)), "count 2", "the same pipe");
    assert_eq!(host.id(), pid);
    assert!(matches!(host.try_wait(), Ok(None)));
    // Deleted once all its memory is back (a lazy restore fills it after
    // the touch was answered).
    wait_until(Duration::from_secs(30), "the image to be deleted", || {
        !images.join(&id).exists()
    });
    // Idle again, hibernated again; a kill then deletes the image with it.
    wait_until(
        Duration::from_secs(60),
        "the gate to hibernate again",
        || state(&root, &id).as_deref() == Some("hibernated"),
    );
    root.ok(&["kill", &id]);
    assert!(!images.join(&id).exists(), "an image nobody owns");
    // Killed with its gate: the host sees the exit now.
    assert_ne!(host.reap(Duration::from_secs(10)), Some(0));
}

/// An unprivileged host's `gov spawn --hibernate`: its keeper cannot make a
/// pid namespace, so it asks the daemon, which starts the worker as the
/// keeper's user in the gate's worker cgroup; the worker serves, and where
/// this root may (CAP_SYS_RESOURCE) it hibernates and comes back too.
#[test]
fn an_unprivileged_keeper_gets_its_worker_from_the_daemon() {
    let test = "an_unprivileged_keeper_gets_its_worker_from_the_daemon";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let dumps = has_cap_sys_resource();
    let _d = daemon_with(
        &root,
        &criu,
        &hibernating(&images, if dumps { "1s" } else { "1h" }),
    );
    let dir = root.dir.path().join("nobody");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(kit::NOBODY), Some(kit::NOBODY)).unwrap();
    let sock = dir.join("counter.sock");
    let worker = kit::fixture("hibernate-worker.py");
    let mut host = Kid::new(
        kit::gov_as_nobody(&root)
            .args(["spawn", "--hibernate", "--project", "/srv/theirs", "--"])
            .arg("python3")
            .arg(&worker)
            .arg(&sock)
            .arg("20")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut host);
    let line = |within| lines.recv_timeout(within).expect("a line from the worker");
    assert!(line(Duration::from_secs(60)).starts_with("ready"));
    let id = root.gate_of(host.id());
    // The worker is nobody's, in w.
    let w = root.gate_cgroup(&id).child("w");
    let pid = *w.read_procs().unwrap().iter().max().expect("a worker in w");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uids.split_whitespace().nth(1), Some("65534"), "{uids}");
    assert_eq!(ask_counter(&sock), 1);
    assert_eq!(line(Duration::from_secs(10)), "count 1");
    // Others may pass through gov's tree but not list it; the keeper,
    // nobody's, still follows its worker's cgroup.events through it.
    let out = kit::as_user(kit::NOBODY, Command::new("ls").arg(&root.path));
    assert!(!out.status.success(), "nobody listed gov's root");
    if dumps {
        wait_until(Duration::from_secs(60), "the gate to hibernate", || {
            state(&root, &id).as_deref() == Some("hibernated")
        });
        kit::gov_as_nobody(&root)
            .args(["touch", &id])
            .status()
            .unwrap();
        assert_eq!(ask_counter(&sock), 2);
        assert_eq!(line(Duration::from_secs(10)), "count 2");
    } else {
        kit::skip(
            &format!("{test} (hibernation part)"),
            "this root lacks CAP_SYS_RESOURCE, which CRIU needs to dump another user's tree",
        );
    }
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
    assert_ne!(host.reap(Duration::from_secs(10)), Some(0));
}

/// A dump CRIU refuses (io_uring) leaves the gate suspended as it was, with
/// the reason in `show` and an event, and is not tried at every scan.
#[test]
fn a_refused_hibernation_leaves_the_gate_suspended_and_says_why() {
    let test = "a_refused_hibernation_leaves_the_gate_suspended_and_says_why";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let _d = daemon_with(&root, &criu, &hibernating(&images, "1s"));
    let worker = kit::fixture("uring-worker.py");
    let mut host = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "--project", "/srv/uring", "--"])
            .arg("python3")
            .arg(&worker)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut first = String::new();
    BufReader::new(host.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("uring"), "{first}");
    let id = root.gate_of(host.id());
    let refused = |root: &TestRoot| {
        root.events()
            .into_iter()
            .filter(|e| {
                e.gate == id.as_str()
                    && e.kind == EventKind::Failed
                    && e.reason
                        .as_deref()
                        .unwrap_or("")
                        .starts_with("hibernate refused")
            })
            .count()
    };
    wait_until(Duration::from_secs(60), "the dump to be refused", || {
        refused(&root) == 1
    });
    assert_eq!(state(&root, &id).as_deref(), Some("suspended"));
    let cg = root.gate_cgroup(&id);
    assert!(
        cg.read_cgroup_events().unwrap().frozen,
        "suspended as before"
    );
    let w = cg.child("w");
    assert!(!w.read_procs().unwrap().is_empty(), "the worker is intact");
    let show = root.ok(&["show", &id]);
    assert!(show.contains("refused"), "{show}");
    assert!(!images.join(&id).exists(), "no image is left");
    root.wait_scans(5);
    assert_eq!(refused(&root), 1, "tried again at a scan");
    // A touch brings it back: it runs.
    root.ok(&["touch", &id]);
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
}

/// A daemon SIGKILLed while CRIU dumps a gate, and again while it
/// restores one: the next daemon finds the gate and ends the step (the
/// dump, which criu finished leaving the worker whole and frozen, is taken
/// back, and the gate is dumped again; the restore is finished into a
/// running gate); the host sees no exit and the worker's state is intact.
#[test]
fn a_daemon_killed_during_a_dump_and_a_restore_recovers_the_gate() {
    let test = "a_daemon_killed_during_a_dump_and_a_restore_recovers_the_gate";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let policy = hibernating(&images, "1s");
    let config = root.policy_file(&policy);
    let daemon = kit::Daemon::start_env(&root, &config, &criu_env(&criu));
    let sock = root.dir.path().join("counter.sock");
    let worker = kit::fixture("hibernate-worker.py");
    // Big enough that its dump and restore take a while.
    let mut host = Kid::new(
        root.gov()
            .args([
                "spawn",
                "--hibernate",
                // Pinned until it serves: 600 MB may outlast idle_timeout.
                "--pin",
                "--no-owner",
                "--project",
                "/srv/crash",
                "--",
            ])
            .arg("python3")
            .arg(&worker)
            .arg(&sock)
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let id = root.gate_of(host.id());
    wait_until(Duration::from_secs(60), "the worker to serve", || {
        sock.exists()
    });
    assert_eq!(ask_counter(&sock), 1);
    root.ok(&["unpin", &id]);
    let cg = root.gate_cgroup(&id);
    let tag =
        |cg: &gov::cgroup::Cgroup| cg.read_tag("hibernate").ok().flatten().unwrap_or_default();
    let wait_tag = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !tag(&cg).starts_with(want) {
            assert!(Instant::now() < deadline, "no {want} tag: {:?}", tag(&cg));
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    // The dump begins: the daemon dies.
    wait_tag("dumping");
    daemon.sigkill();
    let daemon = kit::Daemon::start_env(&root, &config, &criu_env(&criu));
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(&root, &id).as_deref() != Some("hibernated") {
        assert!(
            Instant::now() < deadline,
            "the dump was not finished: {:?} tag {:?}\n{}",
            state(&root, &id),
            tag(&cg),
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cg.child("w").read_procs().unwrap().is_empty());
    assert!(matches!(host.try_wait(), Ok(None)), "the host saw an exit");
    let undone = root.events().iter().any(|e| {
        e.gate == id.as_str()
            && e.kind == EventKind::Adopted
            && e.reason
                .as_deref()
                .unwrap_or("")
                .contains("BackToSuspended")
    });
    assert!(undone, "the dump was taken back: {:?}", root.events());

    // A touch begins the restore: the daemon dies again.
    let mut touch = root
        .gov()
        .args(["touch", &id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_tag("restoring");
    daemon.sigkill();
    let _ = touch.wait();
    let _daemon = kit::Daemon::start_env(&root, &config, &criu_env(&criu));
    // The restore is finished; the gate runs, with its state.
    wait_until(
        Duration::from_secs(60),
        "the restore to be finished",
        || {
            tag(&cg).is_empty() && state(&root, &id).as_deref() == Some("running")
                || state(&root, &id).as_deref() == Some("hibernated")
        },
    );
    if state(&root, &id).as_deref() == Some("hibernated") {
        // The restore had not begun its criu when the daemon died: it was
        // undone, the image kept; a touch now restores it.
        root.ok(&["touch", &id]);
    }
    assert_eq!(ask_counter(&sock), 2, "the counter went on");
    assert!(matches!(host.try_wait(), Ok(None)));
    wait_until(Duration::from_secs(30), "the image to be deleted", || {
        !images.join(&id).exists()
    });
    root.ok(&["kill", &id]);
    let _ = host.reap(Duration::from_secs(10));
}

/// Only a gate's keeper may have the daemon start a worker: anyone else's
/// `start_worker` is refused and starts nothing.
#[test]
fn start_worker_is_refused_to_anyone_but_a_keeper() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let kid = Kid::new(root.spawn_sh("/srv/plain", "sleep 600"));
    let id = root.gate_of(kid.id());
    let pids = || root.gate(&id).unwrap().pids.len();
    wait_until(Duration::from_secs(10), "the gate's processes", || {
        pids() >= 1
    });
    let before = pids();
    let reply = gov::client::request(
        &root.socket,
        gov::protocol::Request::StartWorker {
            cmd: vec!["sh".into(), "-c".into(), "sleep 600".into()],
        },
    )
    .unwrap()
    .unwrap();
    match reply {
        gov::protocol::Response::Error { code, .. } => {
            assert_eq!(code, gov::protocol::ErrorCode::Forbidden)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pids(), before, "something was started");
    root.ok(&["kill", &id]);
}

/// CRIU for the tests that dump another user's tree: those need a root
/// with CAP_SYS_RESOURCE, which the VM suite has (integration/vm-test puts
/// CRIU at GOV_VM_CRIU there) and our hosts lack. Elsewhere a loud SKIP;
/// where the VM was packed with GOV_REQUIRE_CRIU=1 (CI), a failure.
fn criu_for_users_trees(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("GOV_VM_CRIU")
        .or_else(|| std::env::var_os("GOV_CRIU"))
        .map(PathBuf::from)
        .or_else(|| Some(kit::criu::cached()))
        .filter(|p| gov::criu::Criu::find(Some(p)).is_ok());
    let why = match (&found, has_cap_sys_resource()) {
        (None, _) => "no criu >= 4.2 (the VM suite packs integration/build-criu's)",
        (Some(_), false) => "this root lacks CAP_SYS_RESOURCE, which CRIU needs to dump another user's tree (the VM suite has it)",
        (Some(_), true) => return found,
    };
    kit::skip::skip_unless_required(test, "GOV_VM_REQUIRE_CRIU", why);
    None
}

/// The (dev, ino) of every file the processes of `cg` hold open.
fn held_files(cg: &gov::cgroup::Cgroup) -> Vec<(u64, u64, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for pid in cg.read_procs().unwrap_or_default() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let (Ok(m), Ok(link)) = (std::fs::metadata(fd.path()), std::fs::read_link(fd.path()))
            {
                out.push((m.dev(), m.ino(), link));
            }
        }
    }
    out
}

/// A worker that holds the file named by $1 open on fd 3 and waits.
const HOLD_FD3: &str = "exec 3<\"$1\"; echo ready; while :; do sleep 3600; done";

/// A hibernatable gate of `gov` (root's, or `kit::gov_as_nobody`'s):
/// `gov spawn --hibernate SPAWN_ARGS -- sh -c SCRIPT sh ARGS`, once SCRIPT
/// printed "ready". Gives the host, the lines of its stdout and the gate.
fn sh_gate(
    root: &TestRoot,
    mut gov: std::process::Command,
    spawn_args: &[&str],
    script: &str,
    args: &[&Path],
) -> (Kid, mpsc::Receiver<String>, String) {
    let mut host = Kid::new(
        gov.args(["spawn", "--hibernate"])
            .args(spawn_args)
            .args(["--", "sh", "-c", script, "sh"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = lines_of(&mut host);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(60)).unwrap(),
        "ready"
    );
    let id = root.gate_of(host.id());
    (host, lines, id)
}

/// The attack on CRIU's restore (docs/design.md, "CRIU and the user's
/// files"): CRIU, run as root, reopens a restored task's files by path. A
/// user whose hibernated worker held a file of theirs swaps it for a
/// symlink to a root-only file of the same size and touches the gate: the
/// restore must not hand the worker root's file. The gate stays hibernated
/// with the reason shown, its image kept; with the user's file back, the
/// same gate restores and hibernates as before.
#[test]
fn a_users_file_swapped_for_a_link_to_roots_file_is_not_restored() {
    use std::os::unix::fs::MetadataExt;
    let test = "a_users_file_swapped_for_a_link_to_roots_file_is_not_restored";
    let Some(criu) = criu_for_users_trees(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let _d = daemon_with(&root, &criu, &hibernating(&images, "1s"));
    let dir = root.dir.path().join("nobody");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(kit::NOBODY), Some(kit::NOBODY)).unwrap();
    // The user's file and root's secret: the same size and mode, so CRIU's
    // checks at restore (size, mode) cannot tell them apart.
    let notes = dir.join("notes");
    let mine = "nobody's own notes, 40 bytes long......\n";
    let secret = root.dir.path().join("secret");
    let theirs = "ROOT ONLY: the secret, also 40 bytes...\n";
    assert_eq!(mine.len(), theirs.len());
    // $1 the notes, $2 root's secret, $3 the notes' text.
    let as_nobody = |script: &str| {
        let out = kit::as_user(
            kit::NOBODY,
            std::process::Command::new("sh")
                .args(["-c", script, "sh"])
                .arg(&notes)
                .arg(&secret)
                .arg(mine),
        );
        assert!(out.status.success(), "{script}: {out:?}");
    };
    as_nobody("printf '%s' \"$3\" > \"$1\" && chmod 600 \"$1\"");
    std::fs::write(&secret, theirs).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let secret_id = {
        let m = std::fs::metadata(&secret).unwrap();
        (m.dev(), m.ino())
    };

    // nobody's gate: a shell holding its notes open on fd 3.
    let (mut host, _lines, id) = sh_gate(
        &root,
        kit::gov_as_nobody(&root),
        &["--project", "/srv/swap"],
        HOLD_FD3,
        &[&notes],
    );
    let w = root.gate_cgroup(&id).child("w");
    let hibernated = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while state(&root, &id).as_deref() != Some("hibernated") {
            assert!(
                Instant::now() < deadline,
                "{what}: not hibernated within 60 s: {}",
                root.ok(&["show", &id])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    hibernated("the first dump");

    // The swap, done by the user, then the user's touch.
    as_nobody("rm -f \"$1\" && ln -s \"$2\" \"$1\"");
    let touch = kit::gov_as_nobody(&root)
        .args(["touch", &id])
        .output()
        .unwrap();
    let held = held_files(&w);
    assert!(
        !held.iter().any(|(d, i, _)| (*d, *i) == secret_id),
        "the restored worker holds root's file: {held:?}; touch said {touch:?}"
    );
    assert!(!touch.status.success(), "the touch succeeded: {touch:?}");
    let said = kit::text(&touch.stderr);
    assert!(said.contains("cannot open"), "{said}");
    assert_eq!(state(&root, &id).as_deref(), Some("hibernated"));
    assert!(
        w.read_procs().unwrap().is_empty(),
        "a restored tree is left"
    );
    assert!(images.join(&id).exists(), "the image is kept");
    let show = kit::gov_as_nobody(&root)
        .args(["show", &id])
        .output()
        .unwrap();
    assert!(
        kit::text(&show.stdout).contains("cannot open"),
        "show does not say why: {show:?}"
    );
    assert!(matches!(host.try_wait(), Ok(None)), "the host saw an exit");

    // The user's file back (a new file of the same size): the same gate
    // restores, holds it, and goes round again.
    as_nobody("rm -f \"$1\" && printf '%s' \"$3\" > \"$1\" && chmod 600 \"$1\"");
    let notes_id = {
        let m = std::fs::metadata(&notes).unwrap();
        (m.dev(), m.ino())
    };
    kit::gov_as_nobody(&root)
        .args(["touch", &id])
        .status()
        .unwrap();
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    let held = held_files(&w);
    assert!(
        held.iter().any(|(d, i, _)| (*d, *i) == notes_id),
        "the worker does not hold its notes: {held:?}"
    );
    hibernated("the dump after the user's file came back");
    let again = kit::gov_as_nobody(&root)
        .args(["touch", &id])
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
    assert_ne!(host.reap(Duration::from_secs(10)), Some(0));
}

/// A `hibernate_dir` that is a symlink: the daemon refuses to dump there,
/// says why, and never chmods through it (it once did: a chmod by path
/// came before any check).
#[test]
fn a_hibernate_dir_that_is_a_symlink_is_refused_and_never_chmoded() {
    use std::os::unix::fs::PermissionsExt;
    let test = "a_hibernate_dir_that_is_a_symlink_is_refused_and_never_chmoded";
    let Some(criu) = kit::criu::for_shell_workers(test) else {
        return;
    };
    let root = TestRoot::new();
    let elsewhere = root.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
    let images = root.dir.path().join("images");
    std::os::unix::fs::symlink(&elsewhere, &images).unwrap();
    let _d = daemon_with(&root, &criu, &hibernating(&images, "1s"));
    let (_host, _lines, id) = sh_gate(
        &root,
        root.gov(),
        &["--project", "/srv/link"],
        "echo ready; while :; do sleep 3600; done",
        &[],
    );
    wait_until(Duration::from_secs(60), "the dump to be refused", || {
        root.events().iter().any(|e| {
            e.gate == id.as_str()
                && e.kind == EventKind::Failed
                && e.reason.as_deref().unwrap_or("").contains("symlink")
        })
    });
    assert_eq!(state(&root, &id).as_deref(), Some("suspended"));
    let mode = std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "chmod'ed through the symlink");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    root.ok(&["kill", &id]);
}

/// The check before a dump: nobody's worker holds a file that nobody can
/// no longer open by its path (root took it over, as a root process could
/// hand one over). It is not dumped, so it is never killed for that at
/// restore: it stays suspended with the reason shown, and runs on after a
/// touch. (No CRIU runs: the check comes first, so this works on hosts
/// that cannot dump another user's tree.)
#[test]
fn a_users_tree_holding_a_file_they_cannot_open_is_not_dumped() {
    use std::os::unix::fs::PermissionsExt;
    let test = "a_users_tree_holding_a_file_they_cannot_open_is_not_dumped";
    let Some(criu) = kit::criu::for_shell_workers(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let _d = daemon_with(&root, &criu, &hibernating(&images, "1s"));
    let notes = root.dir.path().join("notes");
    std::fs::write(&notes, "nobody's, for now\n").unwrap();
    std::os::unix::fs::chown(&notes, Some(kit::NOBODY), Some(kit::NOBODY)).unwrap();
    // Pinned: the file changes hands before it may be dumped.
    let (mut host, _lines, id) = sh_gate(
        &root,
        kit::gov_as_nobody(&root),
        &["--pin", "--project", "/srv/held"],
        HOLD_FD3,
        &[&notes],
    );
    std::os::unix::fs::chown(&notes, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&notes, std::fs::Permissions::from_mode(0o600)).unwrap();
    root.ok(&["unpin", &id]);
    let refused = || {
        root.events().into_iter().find(|e| {
            e.gate == id.as_str()
                && e.kind == EventKind::Failed
                && e.reason
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("hibernate refused")
        })
    };
    wait_until(Duration::from_secs(60), "the dump to be refused", || {
        refused().is_some()
    });
    let why = refused().unwrap().reason.as_deref().unwrap().to_string();
    assert!(
        why.contains("cannot open") && why.contains(notes.to_str().unwrap()),
        "{why}"
    );
    assert_eq!(state(&root, &id).as_deref(), Some("suspended"));
    assert!(!images.join(&id).exists(), "an image was written");
    let w = root.gate_cgroup(&id).child("w");
    assert!(!w.read_procs().unwrap().is_empty(), "the worker is gone");
    kit::gov_as_nobody(&root)
        .args(["touch", &id])
        .status()
        .unwrap();
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
}

// ---------------------------------------------------------------------------
// Issue 21: a touch answered once the worker runs, and a dump taken back

/// The criu lazy-pages process at work on `images`, if there is one.
fn lazy_pages_of(images: &Path, criu: &Path) -> Option<u32> {
    gov::hibernate::criu_at_work(images, criu)
        .into_iter()
        .find(|(_, op)| op == "lazy-pages")
        .map(|(pid, _)| pid)
}

/// A process's state letter in /proc/PID/stat ('T': stopped).
fn proc_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .unwrap_or('?')
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn hibernate_tag(cg: &gov::cgroup::Cgroup) -> String {
    cg.read_tag("hibernate").ok().flatten().unwrap_or_default()
}

fn count(root: &TestRoot, id: &str, kind: EventKind) -> usize {
    root.events()
        .iter()
        .filter(|e| e.gate == id && e.kind == kind)
        .count()
}

/// A heap worker's host: `gov spawn --hibernate -- python3 heap-worker.py
/// MB random`, its stdin and stdout piped, pinned until it is ready (its
/// heap of random bytes takes seconds, longer than these tests' idle
/// timeouts). Returns the host, its gate, its stdin, its lines and the CRC
/// of the heap it printed when ready.
fn heap_gate(
    root: &TestRoot,
    project: &str,
    mb: u64,
) -> (
    Kid,
    String,
    std::process::ChildStdin,
    mpsc::Receiver<String>,
    String,
) {
    let mut host = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "--pin", "--project", project, "--"])
            .arg("python3")
            .arg(kit::fixture("heap-worker.py"))
            .args([&mb.to_string(), "random"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let id = root.gate_of(host.id());
    let stdin = host.stdin.take().unwrap();
    let lines = lines_of(&mut host);
    let ready = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker is ready");
    let crc = ready
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("ready PID CRC, got {ready:?}"))
        .to_string();
    root.ok(&["unpin", &id]);
    (host, id, stdin, lines, crc)
}

fn ask_line(
    stdin: &mut std::process::ChildStdin,
    lines: &mpsc::Receiver<String>,
    req: &str,
) -> String {
    use std::io::Write;
    writeln!(stdin, "{req}").unwrap();
    stdin.flush().unwrap();
    lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no answer to {req} within 60 s"))
}

/// `gov touch` of a hibernated 768 MB gate is answered once its worker
/// runs, while the lazy-pages daemon still fills its memory: held open
/// here by GOV_TEST_FAULT `lazy_fill=sigstop` (the daemon stops the
/// lazy-pages process as the worker runs), so what the test sees when the
/// touch returned is certain: the fill's daemon alive, the record still
/// `restoring`, `ps` showing `running`, the image kept; a `gov freeze`
/// meanwhile waits for the fill. Continued, the
/// fill ends, the record says running, the image goes, and the heap's CRC
/// is right. Then the failure rule: the lazy-pages daemon killed after the
/// touch was answered leaves the gate hibernated with its image (the
/// worker killed), and the next touch restores it whole, the daemon
/// SIGKILLed during its fill and the next daemon finishing the restore.
#[test]
fn a_touch_is_answered_while_memory_streams_in_and_a_failed_fill_hibernates_again() {
    let test = "a_touch_is_answered_while_memory_streams_in_and_a_failed_fill_hibernates_again";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let lazy = gov::criu::Criu::find(Some(&criu)).is_ok_and(|c| c.lazy_pages_supported());
    if !lazy {
        assert!(
            std::env::var("GOV_REQUIRE_CRIU").as_deref() != Ok("1"),
            "{test}: lazy pages are required here (GOV_REQUIRE_CRIU=1)"
        );
        kit::skip(
            test,
            "criu check --feature uffd-noncoop: no userfaultfd here",
        );
        return;
    }
    const MB: u64 = 768;
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let config = root.policy_file(&hibernating(&images, "2s"));
    let d = kit::Daemon::start_env(
        &root,
        &config,
        &[
            ("GOV_CRIU", criu.to_str().unwrap()),
            ("GOV_TEST_FAULT", "lazy_fill=sigstop"),
        ],
    );
    let (mut host, id, mut stdin, lines, crc) = heap_gate(&root, "/srv/lazy-touch", MB);
    let cg = root.gate_cgroup(&id);
    let image = images.join(&id);
    let touch_while_filling = |round: usize| -> u32 {
        wait_until(Duration::from_secs(120), "the gate to hibernate", || {
            count(&root, &id, EventKind::Hibernated) >= round
                && state(&root, &id).as_deref() == Some("hibernated")
        });
        assert!(cg.child("w").read_procs().unwrap().is_empty());
        let started = Instant::now();
        root.ok(&["touch", &id]);
        let answered = started.elapsed();
        // What holds at the moment the touch returned.
        let lazy = lazy_pages_of(&image, &criu).unwrap_or_else(|| {
            panic!(
                "round {round}: no lazy-pages daemon when the touch returned\n{}",
                d.log_text()
            )
        });
        assert_eq!(proc_state(lazy), 'T', "round {round}: stopped by the fault");
        assert_eq!(hibernate_tag(&cg), "restoring", "round {round}");
        assert_eq!(state(&root, &id).as_deref(), Some("running"));
        assert!(
            image.exists(),
            "round {round}: the image is kept until filled"
        );
        assert!(!cg.child("w").read_procs().unwrap().is_empty());
        eprintln!("round {round}: touch of a hibernated {MB} MB gate answered in {answered:?}, its memory still coming");
        lazy
    };

    // Touched: answered while the fill is held. A second touch is
    // answered at once too; a person's freeze needs the gate at rest: it
    // is answered only once the fill ended (scans go on meanwhile).
    let lazy = touch_while_filling(1);
    root.ok(&["touch", &id]);
    let mut freeze = Kid::new(
        root.gov()
            .args(["freeze", &id])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    root.wait_scans(3);
    assert!(
        matches!(freeze.try_wait(), Ok(None)),
        "the freeze was answered while the fill ran"
    );
    assert_eq!(hibernate_tag(&cg), "restoring");
    signal(lazy, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(freeze.reap(Duration::from_secs(120)), Some(0));
    assert_eq!(state(&root, &id).as_deref(), Some("frozen"));
    assert!(hibernate_tag(&cg).is_empty() && !image.exists(), "filled");
    // Kept running while the test reads its heap.
    root.ok(&["pin", &id]);
    root.ok(&["thaw", &id]);
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    assert_eq!(ask_line(&mut stdin, &lines, "sum"), format!("sum {crc}"));
    root.ok(&["unpin", &id]);

    // Hibernated again; touched, and the lazy-pages daemon is killed after
    // the touch was answered: the worker is killed, the gate hibernated
    // again with its image.
    let lazy = touch_while_filling(2);
    let failed_before = count(&root, &id, EventKind::Failed);
    signal(lazy, nix::sys::signal::Signal::SIGKILL);
    wait_until(
        Duration::from_secs(60),
        "the gate to be hibernated again",
        || {
            hibernate_tag(&cg).starts_with("hibernated")
                && state(&root, &id).as_deref() == Some("hibernated")
        },
    );
    assert!(image.exists(), "the image is kept: the only whole copy");
    assert!(
        cg.child("w").read_procs().unwrap().is_empty(),
        "no worker on missing pages"
    );
    assert!(count(&root, &id, EventKind::Failed) > failed_before);
    let show = root.ok(&["show", &id]);
    assert!(show.contains("lazy-pages"), "{show}");
    assert!(matches!(host.try_wait(), Ok(None)), "the host saw an exit");

    // The next touch restores it whole, though the daemon is SIGKILLed
    // while the fill runs: the next daemon waits for the lazy-pages
    // daemon (criu at work) and then finishes the restore.
    let started = Instant::now();
    root.ok(&["touch", &id]);
    let answered = started.elapsed();
    let lazy = lazy_pages_of(&image, &criu).expect("a lazy-pages daemon");
    root.ok(&["pin", &id]);
    // Continued first: a stopped lazy-pages whose parent dies is in an
    // orphaned process group, which the kernel sends SIGHUP (it dies, and
    // the pages it had not copied would read as zeros: found so here).
    signal(lazy, nix::sys::signal::Signal::SIGCONT);
    d.sigkill();
    // Still filling after the daemon died (768 MB takes longer than the
    // kill): the next daemon must wait for it and finish the restore.
    let mid_fill = proc_state(lazy) != 'Z' && lazy_pages_of(&image, &criu) == Some(lazy);
    let d = daemon_with(&root, &criu, &hibernating(&images, "2s"));
    wait_until(
        Duration::from_secs(120),
        "the restore to be finished",
        || {
            hibernate_tag(&cg).is_empty()
                && !image.exists()
                && state(&root, &id).as_deref() == Some("running")
        },
    );
    eprintln!("touch after a failed fill answered in {answered:?}");
    assert_eq!(ask_line(&mut stdin, &lines, "sum"), format!("sum {crc}"));
    assert!(matches!(host.try_wait(), Ok(None)));
    let recovered = root.events().iter().any(|e| {
        e.gate == id.as_str()
            && e.kind == EventKind::Adopted
            && e.reason.as_deref().unwrap_or("").contains("RestoreDone")
    });
    eprintln!("daemon killed mid-fill: {mid_fill}; recovered by the next: {recovered}");
    if mid_fill {
        assert!(recovered, "{}", d.log_text());
    }
    root.ok(&["kill", &id]);
    assert!(!image.exists());
}

/// A line written to a gate's stdin while its dump runs takes the dump
/// back: GOV_TEST_FAULT `dumped=sleep:3000` holds the owner between the
/// dump (image complete, worker frozen and whole) and its look for input,
/// and the test writes then. The gate ends running with no image, a
/// `dump_undone` event says why, and the line is answered exactly once.
/// The plain case then: with nothing written, the next dump is finished:
/// hibernated, the worker's processes gone, and a line restores it with
/// its heap whole.
#[test]
fn input_during_a_dump_takes_the_dump_back_and_is_answered_once() {
    let test = "input_during_a_dump_takes_the_dump_back_and_is_answered_once";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    // Wakes on input (stdin only: nothing else to refuse a dump for).
    let policy = format!(
        "hibernate_dir = {:?}\nscan_interval = \"200ms\"\n[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1h\"\nhibernate_after = \"0s\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\nwake_quiet = \"300ms\"\n",
        images.display().to_string()
    );
    let config = root.policy_file(&policy);
    let d = kit::Daemon::start_env(
        &root,
        &config,
        &[
            ("GOV_CRIU", criu.to_str().unwrap()),
            ("GOV_TEST_FAULT", "dumped=sleep:3000"),
        ],
    );
    let (mut host, id, mut stdin, lines, crc) = heap_gate(&root, "/srv/dump-undo", 300);
    let cg = root.gate_cgroup(&id);
    let w = cg.child("w");
    let image = images.join(&id);
    let pids = w.read_procs().unwrap();

    // The dump is written, the worker still there: a line comes.
    wait_until(Duration::from_secs(60), "the dump to be written", || {
        image.exists() && hibernate_tag(&cg) == "dumping"
    });
    assert_eq!(w.read_procs().unwrap(), pids, "whole during the pause");
    {
        use std::io::Write;
        writeln!(stdin, "ping").unwrap();
        stdin.flush().unwrap();
    }
    let pong = lines
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no answer\n{}", d.log_text()));
    assert_eq!(pong, "pong");
    let undone: Vec<_> = root
        .events()
        .into_iter()
        .filter(|e| e.gate == id.as_str() && e.kind == EventKind::DumpUndone)
        .collect();
    assert_eq!(undone.len(), 1, "{:?}", root.events());
    let why = undone[0].reason.clone().unwrap_or_default();
    assert!(why.contains("input came during the dump"), "{why}");
    assert_eq!(count(&root, &id, EventKind::Hibernated), 0);
    assert_eq!(count(&root, &id, EventKind::Restored), 0, "never restored");
    assert!(!image.exists(), "the image of an undone dump is deleted");
    assert_eq!(w.read_procs().unwrap(), pids, "the same processes");
    assert!(
        lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "the line was answered twice"
    );

    // Nothing written this time: the dump is finished.
    wait_until(Duration::from_secs(60), "the gate to hibernate", || {
        count(&root, &id, EventKind::Hibernated) == 1
            && state(&root, &id).as_deref() == Some("hibernated")
    });
    assert!(image.exists());
    assert!(w.read_procs().unwrap().is_empty(), "its memory is freed");
    assert_eq!(count(&root, &id, EventKind::DumpUndone), 1);
    // A line restores it, its heap whole.
    assert_eq!(ask_line(&mut stdin, &lines, "sum"), format!("sum {crc}"));
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
}

/// A touch that comes while a gate is dumped takes the dump back: it
/// waits in the owner's mailbox behind the dump (GOV_TEST_FAULT
/// `dumped=sleep:3000` holds the owner between the dump and its look), the
/// dump is undone (`dump_undone`, "touched"), and the touch thaws the same
/// worker: nothing was restored.
#[test]
fn a_touch_during_a_dump_takes_the_dump_back() {
    let test = "a_touch_during_a_dump_takes_the_dump_back";
    let Some(criu) = criu_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    let config = root.policy_file(&hibernating(&images, "1s"));
    let _d = kit::Daemon::start_env(
        &root,
        &config,
        &[
            ("GOV_CRIU", criu.to_str().unwrap()),
            ("GOV_TEST_FAULT", "dumped=sleep:3000"),
        ],
    );
    let (mut host, id, mut stdin, lines, crc) = heap_gate(&root, "/srv/dump-touch", 200);
    let cg = root.gate_cgroup(&id);
    let w = cg.child("w");
    let image = images.join(&id);
    let pids = w.read_procs().unwrap();
    wait_until(Duration::from_secs(60), "the dump to be written", || {
        image.exists() && hibernate_tag(&cg) == "dumping"
    });
    root.ok(&["touch", &id]);
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    let undone: Vec<_> = root
        .events()
        .into_iter()
        .filter(|e| e.gate == id.as_str() && e.kind == EventKind::DumpUndone)
        .collect();
    assert_eq!(undone.len(), 1, "{:?}", root.events());
    assert!(undone[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("touched"));
    assert_eq!(count(&root, &id, EventKind::Hibernated), 0);
    assert_eq!(count(&root, &id, EventKind::Restored), 0);
    assert!(!image.exists());
    assert_eq!(w.read_procs().unwrap(), pids, "the same processes");
    root.ok(&["pin", &id]);
    assert_eq!(ask_line(&mut stdin, &lines, "sum"), format!("sum {crc}"));
    assert!(matches!(host.try_wait(), Ok(None)));
    root.ok(&["kill", &id]);
}
